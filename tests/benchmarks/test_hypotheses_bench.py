import json

import numpy as np
import pytest

from closedloop.benchmarks.hypotheses import (DOT_DIAMETERS, DOT_POSITIONS, GRATING_FREQUENCIES, GRATING_ORIENTATIONS,
                                              BenchRun, HypothesisBenchResult, TwinRun, bench_pool,
                                              format_hypothesis_bench, format_twin_bench, rig_neurons,
                                              run_hypothesis_bench, run_twin_bench, write_json)
from closedloop.select.hypotheses import NONE_FITS
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.contours import standard_set


def small_pool(full: StimulusPool) -> StimulusPool:
    """Every 6th shape, every 2nd dot and every 2nd grating of the default pool."""
    contours, dots, gratings = 366, 366 + 125, len(full)
    keep = [*range(0, contours, 6), *range(contours, dots, 2), *range(dots, gratings, 2)]
    return StimulusPool(full.images[keep], [full.families[i] for i in keep], [full.params[i] for i in keep])


def test_the_default_pool_is_the_standard_set_a_grid_of_dots_and_gratings():
    pool = bench_pool(size_px=8)
    assert pool.families.count("contour") == 366 and pool.params[:366] == standard_set()
    dots = [p for f, p in zip(pool.families, pool.params) if f == "dot"]
    assert len(dots) == len(DOT_DIAMETERS) * len(DOT_POSITIONS) ** 2 == 125
    assert {d["diameter"] for d in dots} == set(DOT_DIAMETERS)
    gratings = [p for f, p in zip(pool.families, pool.params) if f == "grating"]
    assert len(gratings) == len(GRATING_ORIENTATIONS) * len(GRATING_FREQUENCIES) == 108
    assert {g["frequency"] for g in gratings} == set(GRATING_FREQUENCIES) and min(GRATING_FREQUENCIES) == 1
    assert max(GRATING_FREQUENCIES) == 16


def test_the_figures_and_table_count_what_the_runs_did(tmp_path):
    """Hand-made runs, with each figure worked out by hand: a false decision is one for a hypothesis
    that is not true; "none fits" and undecided are not."""
    runs = [BenchRun("dot", "dot", "adaptive", "dot", 10), BenchRun("dot", "dot", "adaptive", "curvature", 30),
            BenchRun("dot", "dot", "adaptive", None, 100), BenchRun("dot", "dot", "fixed", "dot", 40),
            BenchRun("dot", "dot", "fixed", NONE_FITS, 100), BenchRun("dot", "dot", "fixed", None, 100),
            BenchRun("dot, left out", NONE_FITS, "adaptive", NONE_FITS, 20),
            BenchRun("dot, left out", NONE_FITS, "fixed", "curvature", 50)]
    result = HypothesisBenchResult(runs, ["curvature", "dot"], pool_size=9, threshold=0.9, budget=100, seconds=2)
    assert result.accuracy("adaptive") == 2 / 4 and result.accuracy("fixed") == 1 / 4
    assert result.false_rate("adaptive") == 1 / 4 and result.false_rate("fixed") == 1 / 4
    assert result.false_rate("fixed", "dot") == 0 and result.false_rate("fixed", "dot, left out") == 1
    assert result.median_trials("adaptive") == 25 and result.median_trials("fixed") == 75
    assert result.ratio() == 3 and result.select("adaptive", "curvature") == []
    lines = format_hypothesis_bench(result).splitlines()
    assert lines[0] == "hypothesis tests: 9 stimuli, threshold 0.9, budget 100 responses, 2 s"
    all_adaptive, all_fixed = lines[-3].split(), lines[-2].split()
    assert all_adaptive == ["all", "adaptive", "2/4", "1/4", "1/4", "1/4", "25"]
    assert all_fixed == ["all", "fixed", "1/4", "1/4", "1/4", "1/4", "75", "3.00"]
    assert lines[-1] == "false-decision rate (decided for a hypothesis that is not true): adaptive 25.0%, fixed 25.0%"
    write_json(result, tmp_path / "bench.json")
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["designs"]["adaptive"]["false_decision_rate"] == 0.25 and len(written["runs"]) == 8


def test_the_adaptive_test_decides_right_and_rarely_falsely_on_synthetic_neurons():
    """4 neurons of each hypothesis (well specified) and of each tuned hypothesis left out of the
    test (the right verdict: none fits). The adaptive design decides for the truth in most runs,
    far above guessing among five outcomes, and for a false hypothesis in few: without the
    outcome "none fits" every left-out neuron would be a false decision or undecided. The small
    pool (61 shapes, 63 dots, 54 gratings) is covered at 10% (29 stimuli of each family), so a
    decision fits in the budget; no run decides before its families are covered."""
    pool = small_pool(bench_pool(size_px=8))
    seen = []
    result = run_hypothesis_bench(pool, neurons=4, budget=150, particles=100, seed=0, rig=False,
                                  test={"cover": 0.1}, progress=seen.append)
    assert seen == result.runs and result.pool_size == len(pool)
    assert result.groups() == ["curvature", "dot", "orientation", "untuned", "curvature, left out",
                               "dot, left out", "orientation, left out"]
    assert {r.truth for r in result.runs if r.group.endswith("left out")} == {NONE_FITS}
    for run in result.runs:  # a run ends at a decision or at the budget, never past it; never before
        assert 1 <= run.trials <= 150 and (run.decided is not None or run.trials == 150)  # 3 x 29 stimuli
        assert run.trials >= 87
    assert result.accuracy("adaptive") >= 0.6
    assert result.accuracy("adaptive", "orientation, left out") >= 0.75
    assert result.false_rate("adaptive") <= 0.15
    assert "false-decision rate" in format_hypothesis_bench(result).splitlines()[-1]


def test_rig_units_are_rated_per_window_and_named_by_kind():
    pool = small_pool(bench_pool(size_px=64))
    hypotheses = [{"name": "curvy", "model": "curvature"}, {"name": "flat", "model": "untuned"}]
    units = rig_neurons(pool, hypotheses, neurons=2, seed=0)
    assert [(u.group, u.truth) for u in units] == [("rig curvature unit", "curvy")] * 2
    for unit in units:  # the simulation's mean driven rate, 24 spikes/s, over a 100 ms window
        assert unit.rates.shape == (len(pool),) and np.all(unit.rates > 0)
        assert 0.5 < unit.rates.mean() < 5 and unit.rates.std() > 0.1


def test_twin_figures_count_agreements():
    runs = [TwinRun("a", NONE_FITS, {}, NONE_FITS, 100), TwinRun("b", "curvature", {}, "curvature", 50),
            TwinRun("c", NONE_FITS, {}, None, 300)]
    from closedloop.benchmarks.hypotheses import TwinBenchResult

    result = TwinBenchResult(runs, ["curvature", NONE_FITS], pool_size=300, full_trials=1500, threshold=0.95,
                             budget=300, seconds=1)
    assert result.agreement == 2 / 3 and result.trial_fraction == 450 / 4500
    assert format_twin_bench(result).splitlines()[-1] == (
        "agreement with the full design: 2/3 (67%); adaptive trials 0.100 of the full design's (1/10.0)")


def test_the_twin_bench_compares_the_adaptive_and_the_full_design(shared_v4, tmp_path):
    pool = small_pool(bench_pool(size_px=112))
    result = run_twin_bench(shared_v4 / "compact_models", pool, limit=2, particles=100, seed=0)
    assert len(result.runs) == 2 and result.full_trials == 5 * len(pool) and result.budget == len(pool)
    for run in result.runs:
        assert run.trials <= result.budget and abs(sum(run.full_posterior.values()) - 1) < 1e-4
        assert run.full == max(run.full_posterior, key=run.full_posterior.get) or run.full is None
    assert 0 < result.trial_fraction <= 0.2
    write_json(result, tmp_path / "twins.json")
    written = json.loads((tmp_path / "twins.json").read_text())
    assert written["agreement"] == result.agreement and [r["twin"] for r in written["runs"]] == [
        r.twin for r in result.runs]


def test_a_folder_without_models_is_a_one_line_error(tmp_path):
    from closedloop.errors import ClosedLoopError

    with pytest.raises(ClosedLoopError, match="compact") as error:
        run_twin_bench(tmp_path, bench_pool(size_px=8), limit=1)
    assert "\n" not in str(error.value)
