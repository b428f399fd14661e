"""Sweeps on a real local Ray: cells as tasks, results recorded as they finish, finished cells
skipped on a rerun, a failing cell recorded while the others finish; the grid and the journal."""

from __future__ import annotations

import json
import shutil

import pytest
from rich.console import Console

from closedloop.benchmarks.efficiency import Arm, EfficiencyData, efficiency_from_paths, with_random
from closedloop.errors import ClosedLoopError
from closedloop.sweep import efficiency, run_sweep
from closedloop.sweep.grid import cell_id, combinations, parse_vary, parse_values, with_settings
from closedloop.sweep.journal import Journal


def _plan(tiny, twins_dir=None, arms=(), seeds=1, varied=None, limit=2, budget=24, cache=None):
    data = EfficiencyData.load(twins_dir or tiny["twins"], [tiny["pool"]], tiny["heldout"], limit=limit,
                               core_models=2, log=lambda m: None)
    return efficiency.plan(data, with_random(list(arms)), seeds, {"budget": budget, "batch": 4}, varied or {},
                           cache)


def _console():
    return Console(record=True, width=200)


def test_a_two_cell_sweep_writes_results_and_a_rerun_skips_both(ray_local, tiny, tmp_path):
    plan = _plan(tiny, cache=tmp_path / "cache")
    assert len(plan.cells) == 2  # random on each of 2 twins
    console = _console()
    outcome = run_sweep(plan, tmp_path / "out", console=console)
    assert (outcome.ran, outcome.skipped, outcome.failed) == (2, 0, 0) and "Ray 2.60" in outcome.ray
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["done"] == 2 and written["failed"] == 0
    assert sorted(written["cells"], key=lambda r: r["id"]) == sorted(outcome.records, key=lambda r: r["id"])
    assert [r["id"] for r in outcome.records] == [cell_id("efficiency", inputs) for inputs in plan.cells]
    for record, inputs in zip(outcome.records, plan.cells):  # the outcome in grid order, the file as cells end
        assert record["status"] == "done" and record["error"] is None and record["inputs"] == inputs
        assert record["outputs"]["session"]["trials"] == [16, 24] and len(record["outputs"]["session"]["r"]) == 2
        provenance = record["provenance"]
        assert provenance["ray"] == outcome.ray and provenance["closedloop"] and provenance["host"]
        assert provenance["started"] < provenance["ended"] and provenance["seconds"] > 0
    assert {r["inputs"]["twin"] for r in written["cells"]} == {p.name for p in EfficiencyData.load(
        tiny["twins"], [tiny["pool"]], tiny["heldout"], limit=2, core_models=2, log=lambda m: None).twins}
    journal = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in journal] == written["cells"]

    console = _console()
    again = run_sweep(_plan(tiny, cache=tmp_path / "cache"), tmp_path / "out", console=console)
    assert (again.ran, again.skipped) == (0, 2) and again.records == outcome.records and again.ray is None
    assert "skipped 2 finished cells" in console.export_text()
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 2  # nothing ran again


def test_a_cell_that_raises_is_recorded_and_the_rest_finish(ray_local, tiny, tmp_path):
    twins = tmp_path / "twins"
    shutil.copytree(tiny["twins"], twins)
    plan = _plan(tiny, twins, arms=[Arm.parse("max_response")], cache=tmp_path / "cache")
    broken = plan.cells[0]["twin"]
    (twins / broken).write_bytes(b"not a state dict")
    plan = _plan(tiny, twins, arms=[Arm.parse("max_response")], cache=tmp_path / "cache")
    console = _console()
    outcome = run_sweep(plan, tmp_path / "out", console=console)
    assert (outcome.ran, outcome.failed) == (4, 2)
    by_twin = {}
    for record in json.loads((tmp_path / "out" / "results.json").read_text())["cells"]:
        by_twin.setdefault(record["inputs"]["twin"], []).append(record)
    for record in by_twin[broken]:
        assert record["status"] == "failed" and record["outputs"] is None
        assert broken in record["error"] and "unreadable" in record["error"] and "\n" not in record["error"]
        assert record["provenance"]["seconds"] >= 0
    others = [r for twin, records in by_twin.items() if twin != broken for r in records]
    assert len(others) == 2 and all(r["status"] == "done" for r in others)
    assert f"failed: {by_twin[broken][0]['error']}" in console.export_text()

    (name, report), = efficiency.reports(outcome.done(), [])  # the table of the cells that finished
    assert report.twins == 1 and [len(runs) for runs in report.sessions.values()] == [1, 1]
    without_random = [r for r in outcome.done() if r["inputs"]["strategy"]["label"] != "random"]
    assert efficiency.reports(without_random, []) == [("defaults", None)]
    assert "no finished random cell" in efficiency.table(efficiency.reports(without_random, []))

    again = run_sweep(plan, tmp_path / "out", console=_console())  # the failed cells are retried
    assert (again.ran, again.skipped, again.failed) == (2, 2, 2)


def test_a_varied_setting_reaches_each_cell(ray_local, tiny, tmp_path):
    """model.refresh_every goes to the learner (its refreshes), budget to the session (its trials)."""
    varied = parse_vary(["model.refresh_every=8,64", "budget=24,40"], efficiency.check_setting)
    plan = _plan(tiny, varied=varied, limit=1, cache=tmp_path / "cache")
    outcome = run_sweep(plan, tmp_path / "out", console=_console())
    sessions = {(r["inputs"]["settings"]["model.refresh_every"], r["inputs"]["settings"]["budget"]):
                r["outputs"]["session"] for r in outcome.records}
    assert set(sessions) == {(8, 24), (8, 40), (64, 24), (64, 40)}
    assert sessions[8, 40]["trials"] == [16, 32, 40] and sessions[8, 24]["trials"] == [16, 24]
    assert sessions[8, 40]["refreshes"] > sessions[64, 40]["refreshes"]
    named = efficiency.reports(outcome.done(), list(varied))
    assert [name for name, _ in named] == ["model.refresh_every=8, budget=24", "model.refresh_every=8, budget=40",
                                           "model.refresh_every=64, budget=24", "model.refresh_every=64, budget=40"]
    assert efficiency.plot(named, tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_a_cell_is_the_benchs_session(ray_local, tiny, tmp_path):
    """One twin: the bench's sessions and the sweep's cells are the same sessions, to the last bit (the
    same twin, core, seeds and code path)."""
    arms = [Arm.parse("max_response")]
    report = efficiency_from_paths(tiny["twins"], [tiny["pool"]], tiny["heldout"], limit=1, core_models=2,
                                   arms=arms, budget=40, seeds=2, cache=tmp_path / "bench", log=lambda m: None)
    outcome = run_sweep(_plan(tiny, arms=arms, seeds=2, limit=1, budget=40, cache=tmp_path / "sweep"),
                        tmp_path / "out", console=_console())
    swept = efficiency.reports(outcome.done(), [])[0][1]
    for label in ("random", "max_response"):
        assert len(swept.sessions[label]) == 2 and \
            [(s.seed, s.trials, s.r, s.drive, s.distinct, s.refreshes) for s in swept.sessions[label]] == \
            [(s.seed, s.trials, s.r, s.drive, s.distinct, s.refreshes) for s in report.sessions[label]]

    def figures(rows):  # all but the timing
        return [{k: v for k, v in row.items() if k != "ms_per_decision"} for row in rows]

    assert figures(swept.rows()) == figures(report.rows())


def test_settings_are_checked_by_the_real_spec_and_named():
    assert parse_values("8,16") == [8, 16] and parse_values("true,false") == [True, False]
    assert parse_values("[1, 2],[3]") == [[1, 2], [3]] and parse_values("latent,heldout") == ["latent", "heldout"]
    varied = parse_vary(["model.members=8,16", "selection.batch=2,4"], efficiency.check_setting)
    assert varied == {"model.members": [8, 16], "batch": [2, 4]}
    assert combinations(varied) == [{"model.members": 8, "batch": 2}, {"model.members": 8, "batch": 4},
                                    {"model.members": 16, "batch": 2}, {"model.members": 16, "batch": 4}]
    assert combinations({}) == [{}]
    for text, message in (("model.members=8,1", "--vary model.members=1: members: Input should be greater"),
                          ("model.core.dims=1", "--vary model.core.dims=1: core.dims: Input should be greater"),
                          ("model.nope=3", "--vary model.nope=3: nope: Extra inputs are not permitted"),
                          ("batch=0", "--vary batch=0: batch: Input should be greater than or equal to 1"),
                          ("budget=4", "--vary budget=4: budget: must be a whole number of trials, at least 8"),
                          ("speed=2", "--vary speed=2: not a setting of sweep efficiency"),
                          ("members", "--vary 'members': expected KEY=V1,V2"),
                          ("batch=2,2", "--vary batch: a value is given twice")):
        with pytest.raises(ClosedLoopError) as error:
            parse_vary([text], efficiency.check_setting)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)
    with pytest.raises(ClosedLoopError, match="--vary selection.batch: given twice"):
        parse_vary(["batch=2", "selection.batch=4"], efficiency.check_setting)


def test_a_cells_identity_is_a_stable_hash_of_its_inputs():
    inputs = {"twin": "a.pt", "seed": 0, "settings": {"budget": 24, "model.members": 8}}
    same = {"settings": {"model.members": 8, "budget": 24}, "seed": 0, "twin": "a.pt"}
    assert cell_id("efficiency", inputs) == cell_id("efficiency", same) == "da1e873053b6c560"  # on any machine
    assert cell_id("efficiency", {**inputs, "seed": 1}) != cell_id("efficiency", inputs)
    assert cell_id("replay", inputs) != cell_id("efficiency", inputs)


def test_nested_settings_replace_only_their_field():
    from closedloop.config import CoreSpec, ModelSpec

    spec = ModelSpec(core=CoreSpec(kind="compact", path="core", layer="4"), members=16)
    changed = with_settings(spec, {"core.dims": 8, "members": 4})
    assert (changed.core.dims, changed.members, changed.core.layer) == (8, 4, "4") and spec.core.dims == 256
    with pytest.raises(ClosedLoopError, match="'members' is not a table"):
        with_settings(spec, {"members.x": 1})


def test_a_journal_cut_mid_line_keeps_every_whole_record(tmp_path):
    """A sweep killed while writing a record: the records before it are read back, the half line is
    ignored, and the next record starts a line of its own."""
    journal = Journal(tmp_path)
    journal.add({"id": "a", "status": "done", "outputs": {"x": 1}})
    journal.add({"id": "b", "status": "failed", "outputs": None, "error": "boom"})
    journal.close()
    with open(tmp_path / "results.jsonl", "a") as file:
        file.write('{"id": "c", "stat')
    again = Journal(tmp_path)
    assert again.damaged == 1 and again.done("a") and not again.done("b") and not again.done("c")
    again.add({"id": "b", "status": "done", "outputs": {"x": 2}})  # a retried cell: the latest record wins
    again.close()
    reread = Journal(tmp_path)
    assert reread.damaged == 1 and reread.done("b") and reread.records["b"]["outputs"] == {"x": 2}
    written = json.loads((tmp_path / "results.json").read_text())
    assert (written["done"], written["failed"]) == (2, 0) and [r["id"] for r in written["cells"]] == ["a", "b"]
    reread.close()


def test_an_out_folder_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ClosedLoopError, match=f"--out {tmp_path / 'file' / 'out'}: cannot write"):
        Journal(tmp_path / "file" / "out")
