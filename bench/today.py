"""Today's learner as a baseline: a bench script of an earlier commit, run from a git worktree.

The learner a change replaces is gone from the working tree; a benchmark that measures its
successor runs the earlier commit's own script, on this machine and in the same run, for the
figures to compare against (the earlier package, not this one, is imported there).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TODAY = "eb39cc0"  # the last commit with the bootstrap-ensemble learner (OnlineEnsemble)


def run_at(commit: str, script: str, args: list[str], timeout: float = 3600.0) -> str:
    """stdout of ``python SCRIPT ARGS`` in a worktree of ``commit`` (its package first on the path)."""
    folder = Path(tempfile.mkdtemp(prefix="closedloop-at-")) / "tree"
    subprocess.run(["git", "-C", str(PROJECT), "worktree", "add", "--detach", str(folder), commit],
                   check=True, capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(folder)}
        done = subprocess.run([sys.executable, str(folder / script), *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{script} at {commit} failed: {done.stderr.strip().splitlines()[-1:]}")
        return done.stdout
    finally:
        subprocess.run(["git", "-C", str(PROJECT), "worktree", "remove", "--force", str(folder)], capture_output=True)


def numbers(pattern: str, text: str) -> list[tuple[float, ...]]:
    """Every match of ``pattern`` (regular expression with number groups) in ``text``, as floats."""
    return [tuple(float(g) for g in match) if isinstance(match, tuple) else (float(match),)
            for match in re.findall(pattern, text)]
