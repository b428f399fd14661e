"""The fuzz harness: it tells tracebacks, hangs and nonsensical accepts from clean errors, and on
a CI budget (a fixed seed, a few minutes on two cores) the commands give none of them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from closedloop.benchmarks.fuzz import build_seeds, describe, run_fuzz
from closedloop.benchmarks.fuzz_run import (ACCEPTED, CLEAN, HANG, NONSENSICAL, TRACEBACK, Case, HarnessError,
                                            classify, run_cases)
from closedloop.errors import ClosedLoopError

CI_INPUTS = 500
CI_SEED = 0


def _raise_value_error() -> None:
    raise ValueError("a plain bug")


def _refuse() -> None:
    raise ClosedLoopError("file x: field 'y': must be positive")


def _refuse_on_two_lines() -> None:
    raise ClosedLoopError("file x:\nfield 'y' is wrong")


def _sleep() -> None:
    time.sleep(60)


def _accept() -> None:
    pass


CHECKS = {"bug": _raise_value_error, "refuse": _refuse, "two-lines": _refuse_on_two_lines, "sleep": _sleep,
          "accept": _accept}


def _run(tmp_path: Path, *cases: Case, timeout: float = 5.0):
    folders = []
    for k, case in enumerate(cases):
        (tmp_path / str(k)).mkdir()
        folders.append((case, tmp_path / str(k)))
    return {o.case.name: o for o in run_cases(folders, CHECKS, timeout, jobs=2)}


def _case(name: str, args: list[str], oracle=None, prepare=lambda folder: None) -> Case:
    return Case("test", name, prepare, args, oracle)


def test_the_harness_cannot_report_zeros_for_bad_code(tmp_path):
    started = time.monotonic()
    outcomes = _run(tmp_path, _case("bug", ["bug"]), _case("refuse", ["refuse"]), _case("two", ["two-lines"]),
                    _case("sleep", ["sleep"]), _case("accept", ["accept"]),
                    _case("nonsense", ["accept"], oracle=lambda folder: "an accepted nonsense"),
                    _case("usage", ["stimuli", "show"]), _case("unknown", ["no-such-command"]),
                    _case("help", ["--help"]))
    assert time.monotonic() - started < 30  # the sleeper was killed at its timeout
    kinds = {name: o.kind for name, o in outcomes.items()}
    assert kinds == {"bug": TRACEBACK, "refuse": CLEAN, "two": TRACEBACK, "sleep": HANG, "accept": ACCEPTED,
                     "nonsense": NONSENSICAL, "usage": CLEAN, "unknown": CLEAN, "help": ACCEPTED}
    assert "ValueError" in outcomes["bug"].signature
    assert outcomes["nonsense"].reason == "an accepted nonsense"
    assert "closedloop: error: file x" in outcomes["refuse"].stderr


def test_an_input_the_harness_cannot_write_stops_the_run(tmp_path):
    def broken(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(HarnessError, match="disk full"):
        _run(tmp_path, _case("broken", ["accept"], prepare=broken))


@pytest.mark.parametrize("status, stderr, kind", [
    (2, "closedloop: error: x\n", CLEAN),
    (2, "a progress note\nclosedloop: error: x\n", CLEAN),
    (2, "closedloop: error: x\nmore\n", TRACEBACK),
    (1, "closedloop: error: x\n", TRACEBACK),
    (0, "Traceback (most recent call last):\n  ...\nKeyError: 1\n", TRACEBACK),
    (-9, "", TRACEBACK),
    (0, "", ACCEPTED),
])
def test_classification(status, stderr, kind):
    assert classify(status, stderr, hung=False) == kind


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    """Seed files made with the real code: a session recorded on the simulated rig (and one killed),
    its NWB export and XDF recording, model files."""
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    build_seeds(folder)
    return folder


def test_ci_budget_no_tracebacks_hangs_or_nonsense(seeds, tmp_path):
    report = run_fuzz(seeds, CI_INPUTS, CI_SEED, timeout=30.0, jobs=2, failures=tmp_path / "failures")
    assert len(report.outcomes) >= CI_INPUTS * 0.95
    assert all(sum(counts.values()) > 0 for counts in report.counts().values())
    groups = report.groups()
    listing = "\n".join(f"{len(found)} x {key}\n{describe(found[0])}" for key, found in groups.items())
    assert not report.failures, f"{len(report.failures)} failures in {len(groups)} groups:\n{listing}"
