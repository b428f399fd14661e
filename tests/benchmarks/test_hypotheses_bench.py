import numpy as np

from closedloop.benchmarks.hypotheses import (DOT_DIAMETERS, DOT_POSITIONS, bench_pool, format_hypothesis_bench,
                                              run_hypothesis_bench)
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.contours import standard_set


def test_the_default_pool_is_the_standard_set_and_a_grid_of_dots():
    pool = bench_pool(size_px=8)
    assert pool.families.count("contour") == 366 and pool.params[:366] == standard_set()
    dots = [p for f, p in zip(pool.families, pool.params) if f == "dot"]
    assert len(dots) == len(DOT_DIAMETERS) * len(DOT_POSITIONS) ** 2 == 125
    assert {d["diameter"] for d in dots} == set(DOT_DIAMETERS)


def test_a_short_bench_run_completes_and_reports():
    full = bench_pool(size_px=8)
    keep = list(range(0, 366, 6)) + list(range(366, len(full), 2))
    pool = StimulusPool(full.images[keep], [full.families[i] for i in keep], [full.params[i] for i in keep])
    seen = []
    result = run_hypothesis_bench(pool, neurons=2, budget=150, particles=100, seed=0, progress=seen.append)
    assert seen == result.runs and len(result.runs) == 3 * 2 * 2
    assert result.hypotheses == ["curvature", "dot", "untuned"] and result.pool_size == len(keep)
    for run in result.runs:
        assert run.decided in (None, *result.hypotheses) and 1 <= run.trials <= 150
        assert run.decided is not None or run.trials == 150
    adaptive = result.select("adaptive")
    assert result.accuracy("adaptive") == np.mean([r.decided == r.truth for r in adaptive]) >= 0.5
    assert result.ratio() == result.median_trials("fixed") / result.median_trials("adaptive")
    table = format_hypothesis_bench(result)
    lines = table.splitlines()
    assert lines[0].startswith(f"hypothesis tests: {len(keep)} stimuli, threshold 0.95, budget 150 responses")
    assert len(lines) == 2 + 4 * 2  # title, header, (3 hypotheses + all) x 2 designs
    all_fixed = lines[-1].split()
    assert all_fixed[:2] == ["all", "fixed"] and float(all_fixed[-1]) == round(result.ratio(), 2)
    assert f"{sum(r.decided == r.truth for r in adaptive)}/6" in lines[-2]
