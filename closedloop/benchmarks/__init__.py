"""Benchmarks of closedloop's designs, run in-process (the ``closedloop bench`` commands)."""
