"""Alignment: spike counts per unit in a response window after each onset."""
