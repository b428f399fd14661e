"""The lock file: every dependency pinned, and this environment installed from it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by canonical name."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _installed_closure(name: str, extras: set[str]) -> dict[str, str]:
    """Every distribution ``name[extras]`` needs in this environment, with its installed version."""
    found: dict[str, str] = {}
    todo = [(name, extras)]
    while todo:
        dist_name, wanted = todo.pop()
        dist = metadata.distribution(dist_name)
        key = canonicalize_name(dist.metadata["Name"])
        if key in found and not wanted:
            continue
        found[key] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            applies = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in (wanted or {""}))
            if applies:
                todo.append((requirement.name, set(requirement.extras)))
    return found


def test_every_dependency_is_pinned_and_installed_at_its_pin():
    lock = _pins(ROOT / "requirements.lock")
    closure = _installed_closure("closedloop", {"test"})
    del closure["closedloop"]
    assert len(closure) > 50  # psychopy, torch, pynwb and what they need
    unpinned = sorted(set(closure) - set(lock))
    assert not unpinned, f"not in requirements.lock (refresh it: README, Quick start): {unpinned}"
    drift = {name: (version, lock[name]) for name, version in closure.items() if version != lock[name]}
    assert not drift, f"installed (left) is not requirements.lock's pin (right); use the README's command: {drift}"


def test_the_build_backend_and_torch_are_pinned_as_the_lock_says():
    lock = _pins(ROOT / "requirements.lock")
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert build == [f"setuptools=={lock['setuptools']}"]
    assert _pins(ROOT / "constraints.txt") == {"torch": lock["torch"]}
    assert lock["torch"].endswith("+cpu")


def test_the_quick_start_installs_from_the_lock():
    """`.ci/run` runs these two blocks as written; both must install from the lock."""
    blocks = [subprocess.run([sys.executable, str(ROOT / ".ci" / "quickstart.py"), which], capture_output=True,
                             text=True, check=True).stdout.strip() for which in ("demo", "tests")]
    assert blocks[0].startswith("pip install -r requirements.lock ") and blocks[0].endswith("closedloop demo")
    assert blocks[1].startswith("pip install -r requirements.lock ") and blocks[1].endswith("python -m pytest")
