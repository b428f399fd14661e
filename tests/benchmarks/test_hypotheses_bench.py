from closedloop.benchmarks.hypotheses import (DOT_DIAMETERS, DOT_POSITIONS, BenchRun, HypothesisBenchResult, bench_pool,
                                              format_hypothesis_bench, run_hypothesis_bench)
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.contours import standard_set


def test_the_default_pool_is_the_standard_set_and_a_grid_of_dots():
    pool = bench_pool(size_px=8)
    assert pool.families.count("contour") == 366 and pool.params[:366] == standard_set()
    dots = [p for f, p in zip(pool.families, pool.params) if f == "dot"]
    assert len(dots) == len(DOT_DIAMETERS) * len(DOT_POSITIONS) ** 2 == 125
    assert {d["diameter"] for d in dots} == set(DOT_DIAMETERS)


def test_the_figures_and_table_count_what_the_runs_did():
    """Hand-made runs, with each figure worked out by hand."""
    runs = [BenchRun("dot", "adaptive", "dot", 10), BenchRun("dot", "adaptive", "curvature", 30),
            BenchRun("dot", "adaptive", None, 100), BenchRun("dot", "fixed", "dot", 40),
            BenchRun("dot", "fixed", None, 100), BenchRun("dot", "fixed", None, 100)]
    result = HypothesisBenchResult(runs, ["curvature", "dot"], pool_size=9, threshold=0.9, budget=100, seconds=2)
    assert result.accuracy("adaptive") == 1 / 3 and result.accuracy("fixed") == 1 / 3
    assert result.median_trials("adaptive") == 30 and result.median_trials("fixed") == 100
    assert result.ratio() == 100 / 30 and result.select("adaptive", "curvature") == []
    lines = format_hypothesis_bench(result).splitlines()
    assert lines[0] == "hypothesis tests: 9 stimuli, threshold 0.9, budget 100 responses, 2 s"
    all_adaptive, all_fixed = lines[-2].split(), lines[-1].split()
    assert all_adaptive == ["all", "adaptive", "1/3", "2/3", "30"]
    assert all_fixed == ["all", "fixed", "1/3", "1/3", "100", "3.33"]


def test_the_adaptive_test_finds_the_hypothesis_each_synthetic_neuron_was_built_from():
    """8 neurons per hypothesis, drawn from the test's own priors (well specified): the adaptive
    design decides for the truth in most runs, far above the 1/3 of guessing (0.79-0.96 over
    seeds 0-7; 2/3 of 24 runs is about 4 standard deviations below 0.9). A posterior that ignored
    the counts would decide nothing; truths mixed up would be wrong."""
    full = bench_pool(size_px=8)
    keep = list(range(0, 366, 6)) + list(range(366, len(full), 2))
    pool = StimulusPool(full.images[keep], [full.families[i] for i in keep], [full.params[i] for i in keep])
    seen = []
    result = run_hypothesis_bench(pool, neurons=8, budget=150, particles=100, seed=0, progress=seen.append)
    assert seen == result.runs and result.pool_size == len(keep)
    for truth in ("curvature", "dot", "untuned"):
        assert len(result.select("adaptive", truth)) == len(result.select("fixed", truth)) == 8
    for run in result.runs:  # a run ends at a decision or at the budget, never past it
        assert 1 <= run.trials <= 150 and (run.decided is not None or run.trials == 150)
    assert result.accuracy("adaptive") >= 2 / 3
