"""`closedloop sweep efficiency|hypotheses|replay` on tiny grids, on a real local Ray: results, the
table, the plot, a rerun that skips; one-line errors for bad settings."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
from click.testing import CliRunner

from closedloop.benchmarks.hypotheses import bench_pool, run_twin_bench
from closedloop.cli import bench_efficiency, bench_hypotheses, main, replay_command
from closedloop.replay.convert import convert_v4
from closedloop.stimuli import StimulusPool
from closedloop.sweep.commands import sweep_commands


def _invoke(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)])


def _small_bench_pool(path, size_px: int):
    """Every 12th shape, every 4th dot and every 4th grating of the bench's pool (90 stimuli), saved."""
    full = bench_pool(size_px)
    keep = [*range(0, 366, 12), *range(366, 491, 4), *range(491, len(full), 4)]
    StimulusPool(full.images[keep], [full.families[i] for i in keep], [full.params[i] for i in keep]).save(path)
    return path


def test_the_sweeps_take_the_options_of_the_commands_they_sweep():
    def options(command, leave=()):
        return {(p.name, p.default) for p in command.params if p.name not in leave}

    assert options(bench_efficiency) <= options(sweep_commands(main)["efficiency"])  # the same arguments, the same defaults
    assert options(bench_hypotheses, ("seed", "json_path")) <= options(sweep_commands(main)["hypotheses"])
    assert options(replay_command, ("source", "strategy", "out", "seed")) <= options(sweep_commands(main)["replay"])
    for command in sweep_commands(main).values():
        assert {"out", "vary", "address", "workers", "seeds"} <= {p.name for p in command.params}


def test_an_efficiency_sweep_runs_reports_and_skips_on_a_rerun(ray_local, tiny, tmp_path):
    args = ["efficiency", "--twins", tiny["twins"], "--pool", tiny["pool"], "--heldout", tiny["heldout"],
            "--limit", 1, "--core-models", 2, "--strategies", "max_response", "--seeds", 1, "--budget", 24,
            "--vary", "model.members=4,8", "--cache", tmp_path / "cache", "--out", tmp_path / "out",
            "--json", tmp_path / "reports.json"]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "sweep efficiency: 4 cells on Ray 2.60.0" in result.stderr and "4/4" in result.stderr
    for name in ("model.members=4", "model.members=8"):
        assert f"settings: {name}\n1 twins; target: held-out r" in result.stdout
    assert "x fewer than random" in result.stdout and "max_response" in result.stdout
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["done"] == 4 and {r["inputs"]["strategy"]["label"] for r in written["cells"]} == \
        {"random", "max_response"}
    reports = json.loads((tmp_path / "reports.json").read_text())
    assert [r["settings"] for r in reports] == ["model.members=4", "model.members=8"]
    assert [row["strategy"] for row in reports[0]["rows"]] == ["random", "max_response"]

    again = _invoke(*args)
    assert again.exit_code == 0, again.output
    assert "all finished before: skipped 4 finished cells" in again.stderr and "(0 run now, 4 skipped)" in again.stderr
    assert again.stdout == result.stdout  # the same table from the recorded cells


def test_bad_settings_are_one_line_errors_naming_the_option(tiny, tmp_path):
    base = ["--twins", tiny["twins"], "--pool", tiny["pool"], "--heldout", tiny["heldout"], "--out", tmp_path]
    for args, message in (
            (["efficiency", *base, "--vary", "model.members=8,1"],
             "closedloop: error: --vary model.members=1: members: Input should be greater than or equal to 2"),
            (["efficiency", *base, "--vary", "warp=2"], "closedloop: error: --vary warp=2: not a setting of sweep "
                                                        "efficiency"),
            (["efficiency", *base, "--strategies", "nope"], "closedloop: error: unknown strategy 'nope'"),
            (["hypotheses", "--out", tmp_path, "--vary", "threshold=0.3"],
             "closedloop: error: --vary threshold=0.3: strategy 'hypothesis': params.threshold: Input should be "
             "greater than 0.5"),
            (["hypotheses", "--twins", tiny["twins"], "--out", tmp_path, "--vary", "neurons=2"],
             "closedloop: error: --vary neurons=2: not a setting of sweep hypotheses --twins"),
            (["replay", tmp_path, "--out", tmp_path, "--vary", "every=0"],
             "closedloop: error: --vary every=0: every: must be a whole number, at least 1")):
        result = _invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(message), \
            result.stderr
    assert not (tmp_path / "results.json").exists()  # refused before anything ran


def test_a_hypotheses_sweep_on_synthetic_neurons(ray_local, tmp_path):
    pool = _small_bench_pool(tmp_path / "pool.npz", 64)
    result = _invoke("hypotheses", "--pool", pool, "--neurons", 1, "--budget", 100, "--seeds", 2,
                     "--vary", "particles=50", "--vary", "threshold=0.9,0.95", "--vary", "cover=0.1",
                     "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "sweep hypotheses: 4 cells on Ray" in result.stderr
    for threshold in ("0.9", "0.95"):
        assert f"settings: particles=50, threshold={threshold}, cover=0.1\nhypothesis tests: 90 stimuli, " \
               f"threshold {threshold}, budget 100 responses" in result.stdout
    assert result.stdout.count("false-decision rate") == 2
    cells = json.loads((tmp_path / "out" / "results.json").read_text())["cells"]
    assert len(cells) == 4 and all(c["status"] == "done" for c in cells)
    for cell in cells:  # each seed's neurons of every group, tested with both designs, within the budget
        runs = cell["outputs"]["runs"]
        assert {r["design"] for r in runs} == {"adaptive", "fixed"} and all(1 <= r["trials"] <= 100 for r in runs)
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_a_hypotheses_sweep_on_twins(ray_local, tiny, tmp_path):
    """Each twin's cell makes the run `closedloop bench hypotheses --twins` makes for it."""
    pool = _small_bench_pool(tmp_path / "pool.npz", 112)
    result = _invoke("hypotheses", "--twins", tiny["twins"], "--limit", 2, "--pool", pool, "--seeds", 1,
                     "--vary", "particles=50", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "hypothesis tests on 2 twins: 90 stimuli, full design 450 responses" in result.stdout
    assert "agreement with the full design" in result.stdout
    cells = json.loads((tmp_path / "out" / "results.json").read_text())["cells"]
    assert sorted(c["inputs"]["index"] for c in cells) == [0, 1]
    for cell in cells:
        run = cell["outputs"]["run"]
        assert run["trials"] <= cell["inputs"]["settings"]["budget"] == 90  # the full design's over 5
        assert abs(sum(run["full_posterior"].values()) - 1) < 1e-4
    bench = run_twin_bench(tiny["twins"], StimulusPool.load(pool), limit=2, particles=50, seed=0)
    in_order = sorted(cells, key=lambda c: c["inputs"]["index"])
    assert [asdict(run) for run in bench.runs] == [c["outputs"]["run"] for c in in_order]


def test_a_replay_sweep_keeps_each_replays_decisions(ray_local, recording, tmp_path):
    session = tmp_path / "session"
    convert_v4(recording, "000001", session)  # 24 images, 3 of them held out: images return after 8
    result = _invoke("replay", session, "--strategies", "max_response", "--every", 8, "--twin-epochs", 2,
                     "--vary", "model.members=4,8", "--vary", "model.input_px=16", "--vary", "selection.no_repeat=8",
                     "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "sweep replay: 2 cells on Ray" in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("max_response")]
    assert len(lines) == 2 and "model.members=4" in lines[0] and "model.members=8" in lines[1]
    cells = json.loads((tmp_path / "out" / "results.json").read_text())["cells"]
    for cell in cells:
        report = cell["outputs"]["report"]
        assert report["pacing"]["every"] == 8 and report["responses"] == 72 and report["decisions"] >= 8
        assert report["alternative"]["strategy"] == "max_response" and report["alternative"]["decisions"] > 0
        decisions = (tmp_path / "out" / cell["files"][0]).read_text().splitlines()
        assert cell["files"] == [f"cells/{cell['id']}/decisions.jsonl"] and len(decisions) == report["decisions"]
        assert all(np.isfinite(json.loads(line)["twin_online"]).all() for line in decisions if "alternative" in line)
