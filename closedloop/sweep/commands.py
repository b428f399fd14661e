"""The ``closedloop sweep`` commands: ``efficiency``, ``hypotheses``, ``replay``.

Each takes the options of the command it sweeps, the very option objects of ``closedloop bench
efficiency``, ``closedloop bench hypotheses`` (but ``--seed`` and ``--json``) and ``closedloop
replay`` (what it reads and its pacing), so the two never drift apart; then the axes (``--seeds``,
``--strategies``, ``--vary``) and where the sweep writes and runs (``--out``, ``--address``,
``--workers``).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import click
from rich.console import Console

from closedloop.benchmarks import efficiency as bench_efficiency
from closedloop.benchmarks import hypotheses as bench_hypotheses
from closedloop.sweep import efficiency, hypotheses, replay
from closedloop.sweep.grid import parse_vary
from closedloop.sweep.runner import Outcome, Plan, run_sweep

PLOT = "sweep.png"
console = Console(stderr=True)  # progress and notes; tables go to stdout

SWEEP = [
    click.Option(["--out"], required=True, type=click.Path(path_type=Path),
                 help="Folder of results.json (a record per cell), results.jsonl and sweep.png; a rerun into it "
                      "skips the finished cells."),
    click.Option(["--vary"], multiple=True, metavar="KEY=V1,V2",
                 help="A setting's values, one cell each (e.g. model.members=8,16 or batch=2,4); repeatable: every "
                      "combination runs."),
    click.Option(["--address"], default=None,
                 help="A running Ray cluster: auto, HOST:6379, or ray://HOST:10001 (Ray Client).  [default: a local "
                      "Ray on this machine]"),
    click.Option(["--workers"], default=None, type=click.IntRange(1),
                 help="Most cells running at once (and a local Ray's CPUs).  [default: every CPU Ray has]"),
]


def _borrowed(command: click.Command, leave: tuple[str, ...] = ()) -> list[click.Parameter]:
    """``command``'s parameters but those named in ``leave``."""
    return [param for param in command.params if param.name not in leave]


def _run(plan: Plan, out: Path, address: str | None, workers: int | None) -> Outcome:
    outcome = run_sweep(plan, out, address, workers, console)
    if outcome.failed:
        console.print(f"{outcome.failed} cells failed (their errors are in {out / 'results.json'}); a rerun "
                      "retries them", markup=False, soft_wrap=True)
    return outcome


def _finish(outcome: Outcome, out: Path, text: str, draw) -> None:
    """Print the table, draw the plot, say where the results are."""
    done = outcome.done()
    if done and text:
        click.echo(text)
        console.print(f"plot: {draw(out / PLOT)}", markup=False, soft_wrap=True)
    else:
        console.print("no finished cells to tabulate", markup=False, soft_wrap=True)
    console.print(f"{len(done)} of {len(outcome.records)} cells of this grid done ({outcome.ran} run now, "
                  f"{outcome.skipped} skipped); results in {out / 'results.json'}", markup=False,
                  soft_wrap=True)


def sweep_efficiency(twins_dir: Path, pool_paths: tuple[Path, ...], heldout_path: Path, features_dir: Path | None,
                     limit: int, core_models: int, heldout_limit: int, strategy_text: str, budget: int, batch: int,
                     seeds: int, target: float | None, cache: Path | None, json_path: Path | None, out: Path,
                     vary: tuple[str, ...], address: str | None, workers: int | None) -> None:
    """The efficiency benchmark (`closedloop bench efficiency`, same options) as a grid: a cell is one
    strategy x one twin x one seed x one combination of --vary settings (model.FIELD, batch, warmup,
    no_repeat, budget)."""
    arms = bench_efficiency.with_random(bench_efficiency.parse_arms(strategy_text))
    varied = parse_vary(vary, efficiency.check_setting)
    data = bench_efficiency.EfficiencyData.load(twins_dir, pool_paths, heldout_path, features_dir, limit,
                                                core_models, heldout_limit,
                                                log=lambda m: console.print(m, markup=False, soft_wrap=True))
    plan = efficiency.plan(data, arms, seeds, {"budget": budget, "batch": batch}, varied, cache)
    outcome = _run(plan, out, address, workers)
    named = efficiency.reports(outcome.done(), list(varied), target)
    if json_path is not None:
        efficiency.write_json(named, json_path)
    _finish(outcome, out, efficiency.table(named), lambda path: efficiency.plot(named, path))


def sweep_hypotheses(pool_path: Path | None, neurons: int, threshold: float, budget: int | None,
                     twins_dir: Path | None, limit: int, seeds: int, out: Path, vary: tuple[str, ...],
                     address: str | None, workers: int | None) -> None:
    """The hypothesis-test benchmark (`closedloop bench hypotheses`) as a grid: a cell is one seed's
    synthetic neurons, or with --twins one twin x one seed, x one combination of --vary settings
    (threshold, budget, particles, cover, level, check, none_fits, batch; neurons)."""
    twins = twins_dir is not None
    varied = parse_vary(vary, lambda key, value: hypotheses.check_setting(key, value, twins))
    pool = bench_hypotheses.load_bench_pool(pool_path, twins)
    settings = {"threshold": threshold, "budget": budget} if twins else \
        {"threshold": threshold, "budget": budget or 500, "neurons": neurons}
    outcome = _run(hypotheses.plan(pool, seeds, settings, varied, twins_dir, limit), out, address, workers)
    named = hypotheses.results(outcome.done(), list(varied))
    _finish(outcome, out, hypotheses.table(named), lambda path: hypotheses.plot(named, path))


def sweep_replay(sources: tuple[Path, ...], strategy_text: str, seeds: int, protocol_path: Path | None,
                 pool_path: Path | None, events: str | None, log_path: Path | None, every: int | None,
                 refresh_every: int, accuracy_every: int, twin_epochs: int, out: Path, vary: tuple[str, ...],
                 address: str | None, workers: int | None) -> None:
    """Replays (`closedloop replay`, its options) as a grid: a cell is one SOURCE x one strategy x one
    seed x one combination of --vary settings (every, refresh_every, accuracy_every, twin_epochs,
    model.FIELD, selection.FIELD)."""
    from closedloop.replay.sources import open_source

    varied = parse_vary(vary, replay.check_setting)
    options = {k: v for k, v in (("events", events), ("log", log_path)) if v is not None}
    opened = {str(source): open_source(source, protocol_path, pool_path, **options) for source in sources}
    strategies = [name.strip() for name in strategy_text.split(";") if name.strip()] or [None]
    settings = {"every": every, "refresh_every": refresh_every, "accuracy_every": accuracy_every,
                "twin_epochs": twin_epochs}
    outcome = _run(replay.plan(opened, strategies, seeds, settings, varied), out, address, workers)
    found = replay.rows(outcome.done(), list(varied))
    _finish(outcome, out, replay.table(found), lambda path: replay.plot(found, path))


def _command(name: str, callback, params: list[click.Parameter]) -> click.Command:
    return click.Command(name, callback=callback, params=params, help=inspect.getdoc(callback))


def sweep_commands(root: click.Group) -> dict[str, click.Command]:
    """The sweep commands, each with the options of the command of ``root`` (``closedloop``) it sweeps."""
    ctx = click.Context(root)
    bench = root.get_command(ctx, "bench")
    swept = {name: bench.get_command(ctx, name) for name in ("efficiency", "hypotheses")}
    swept["replay"] = root.get_command(ctx, "replay")
    return {
        "efficiency": _command("efficiency", sweep_efficiency, [*_borrowed(swept["efficiency"]), *SWEEP]),
        "hypotheses": _command("hypotheses", sweep_hypotheses, [
            *_borrowed(swept["hypotheses"], leave=("seed", "json_path")),
            click.Option(["--seeds"], default=3, show_default=True, type=click.IntRange(1), help="Seeds 0 .. N-1."),
            *SWEEP]),
        "replay": _command("replay", sweep_replay, [
            click.Argument(["sources"], metavar="SOURCE...", nargs=-1, required=True, type=click.Path(path_type=Path)),
            click.Option(["--strategies", "strategy_text"], default="",
                         help="Strategies to ask at every decision besides the session's, ';'-separated (each scored "
                              "by a digital twin), one cell each.  [default: none]"),
            click.Option(["--seeds"], default=1, show_default=True, type=click.IntRange(1),
                         help="Seeds: the session's + 0 .. N-1 (+ 0 makes its decisions again)."),
            *_borrowed(swept["replay"], leave=("source", "strategy", "out", "seed")),
            *SWEEP]),
    }
