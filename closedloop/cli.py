"""The ``closedloop`` command line."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from closedloop.config import load_protocol, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.select.strategies import make_strategy

PROJECT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)  # progress and notes
results = Console()  # tables the user asked for


class _Command(click.Group):
    """Turns a ClosedLoopError into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClosedLoopError as exc:
            click.echo(f"closedloop: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Command)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """Closed-loop visual neurophysiology: present, acquire, model, select, record."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _session_dir(out: Path, name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return out / f"{stamp}_{name}"


def _progress_table(progress, title: str) -> Table:
    table = Table(title=title, show_header=False, box=None)
    table.add_row("presented", f"{progress.presented}/{progress.total}")
    table.add_row("responses", str(progress.responses))
    table.add_row("deadline misses", str(progress.deadline_misses))
    table.add_row("dropped frames", str(progress.dropped_frames))
    t = progress.trials
    table.add_row("trials", f"{t['completed']} completed, {t['fixation_break']} fixation breaks, "
                            f"{t['no_fixation']} without fixation")
    table.add_row("model cores trained", str(progress.core_version))
    table.add_row("held-out r (observed)", _fmt(progress.r_observed))
    table.add_row("held-out r (true rates)", _fmt(progress.r_true))
    return table


def _run(protocol, rig, out: Path, title: str, session: Path | None = None) -> dict:
    """Run a new session in ``out`` (or resume ``session``) with a live progress display."""
    from closedloop.loop import run_session

    resume = session is not None
    session = session or _session_dir(out, protocol.protocol.name)
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        summary = run_session(protocol, rig, session, resume=resume,
                              on_progress=lambda p: live.update(_progress_table(p, title)))
    console.print(f"session recorded in {session}")
    return summary


@main.command()
@click.argument("protocol", type=click.Path(path_type=Path))
@click.option("--rig", "rig_path", required=True, type=click.Path(path_type=Path), help="Rig file (TOML).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("sessions"), show_default=True,
              help="Directory that receives the session directory.")
@click.option("--strategy", default=None, help="Override the protocol's selection strategy.")
def run(protocol: Path, rig_path: Path, out: Path, strategy: str | None) -> None:
    """Run PROTOCOL on a rig; prints the session summary as JSON."""
    import json

    proto = _with_strategy(load_protocol(protocol), strategy)
    summary = _run(proto, load_rig(rig_path), out, f"{proto.protocol.name} ({proto.selection.strategy})")
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("session", type=click.Path(path_type=Path))
def resume(session: Path) -> None:
    """Continue SESSION where it stopped (a killed or failed run), with its own protocol and rig."""
    import json

    protocol, rig = load_protocol(session / "protocol.json"), load_rig(session / "rig.json")
    summary = _run(protocol, rig, session.parent, f"{protocol.protocol.name} (resumed)", session=session)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("session", type=click.Path(path_type=Path))
@click.option("--nwb", "nwb_path", required=True, type=click.Path(path_type=Path), help="NWB file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def export(session: Path, nwb_path: Path, overwrite: bool) -> None:
    """Write SESSION as NWB: units, presentations, stimulus images, protocol and rig."""
    from closedloop.record.nwb import export_nwb

    console.print(f"wrote {export_nwb(session, nwb_path, overwrite=overwrite)}")


@main.command()
@click.argument("recording", type=click.Path(path_type=Path))
@click.option("--events", default=None, help="neo files: the event or epoch channel with the onsets.")
@click.option("--log", "log_path", default=None, type=click.Path(path_type=Path),
              help="neo files: a stimulus log (.jsonl or .csv) on the recording's clock instead.")
@click.option("--start", default=0.05, show_default=True, help="Response window start, s after onset.")
@click.option("--end", default=0.15, show_default=True, help="Response window end, s after onset.")
def responses(recording: Path, events: str | None, log_path: Path | None, start: float, end: float) -> None:
    """Print a recording's response table (NWB, NIX, XDF, anything neo reads) as JSON lines."""
    import json

    from closedloop.replay import read_recording, response_table

    options = {k: v for k, v in (("events", events), ("log", log_path)) if v is not None}
    for row in response_table(read_recording(recording, **options), start, end):
        click.echo(json.dumps(row))


def _with_strategy(protocol, strategy: str | None):
    """The protocol with another selection strategy (validated)."""
    if strategy is None:
        return protocol
    make_strategy(strategy)
    selection = protocol.selection.model_copy(update={"strategy": strategy})
    return protocol.model_copy(update={"selection": selection})


@main.command()
@click.option("--rig", "rig_path", required=True, type=click.Path(path_type=Path), help="Simulated rig file.")
@click.option("--stimuli", required=True, type=click.Path(path_type=Path),
              help="Stimulus file (.npz, as written to a session's stimuli.npz).")
def simulate(rig_path: Path, stimuli: Path) -> None:
    """Simulated acquisition: answer the marker stream with Poisson spikes over LSL."""
    from closedloop.simulate.rig import SpikeSimulator
    from closedloop.stimuli import StimulusPool

    rig = load_rig(rig_path)
    if not rig.rig.simulated:
        raise ClosedLoopError(f"rig file {rig_path}: field 'rig.simulated': this rig is not simulated")
    simulator = SpikeSimulator(rig, StimulusPool.load(stimuli))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _stop_when_orphaned(stop)
    console.print(f"simulating {simulator.n} neurons on LSL stream {rig.spikes.name!r}")
    try:
        simulator.run(stop)
    except KeyboardInterrupt:
        pass
    console.print(f"sent {simulator.spikes_sent} spikes; unknown stimuli: {simulator.unknown_stimuli}")


def _stop_when_orphaned(stop: threading.Event) -> None:
    """Set ``stop`` if this process's parent dies (a killed ``run`` must not leave us behind)."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("sessions"), show_default=True)
@click.option("--protocol", "protocol_path", type=click.Path(path_type=Path),
              default=PROJECT / "protocols" / "demo.toml", show_default=True)
@click.option("--rig", "rig_path", type=click.Path(path_type=Path),
              default=PROJECT / "rigs" / "sim.toml", show_default=True)
def demo(out: Path, protocol_path: Path, rig_path: Path) -> None:
    """The closed loop on the simulated rig: model-chosen images against random ones."""
    protocol, rig = load_protocol(protocol_path), load_rig(rig_path)
    summaries = [
        _run(_with_strategy(protocol, strategy), rig, out, f"demo: {strategy}")
        for strategy in dict.fromkeys([protocol.selection.strategy, "random"])
    ]
    results.print(comparison_table(summaries))
    for s in summaries:
        results.print(f"{s['strategy']}: {s['deadline_misses']} deadline misses, selection turnaround "
                      f"median {_fmt(s['turnaround_ms']['median'])} ms, session {s['session']}")


def comparison_table(summaries: list[dict]) -> Table:
    """One row per session and unit: spikes evoked by the chosen images and held-out accuracy."""
    table = Table(title="model-chosen vs random images",
                  caption="r: held-out Pearson r of the model against the mean observed counts "
                          "and against the simulated true rates")
    for column in ("strategy", "unit", "spikes/chosen", "r observed", "r true"):
        table.add_column(column, justify="left" if column in ("strategy", "unit") else "right")
    for s in summaries:
        chosen = s["mean_counts"].get("chosen", [None] * len(s["units"]))
        r_obs = s["heldout_r_observed"] or [None] * len(s["units"])
        r_true = s["heldout_r_true"] or [None] * len(s["units"])
        for u, name in enumerate(s["units"]):
            table.add_row(s["strategy"] if u == 0 else "", name, _fmt(chosen[u]), _fmt(r_obs[u]),
                          _fmt(r_true[u]), end_section=u == len(s["units"]) - 1)
    return table


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


# ----------------------------------------------------------------- stimuli --
@main.group()
def stimuli() -> None:
    """Stimulus sets (TOML files in stimuli/)."""


def _stimulus_set_path(name: Path) -> Path:
    """SET as given, or a bare name such as ``demo`` for the project's ``stimuli/demo.toml``."""
    shipped = PROJECT / "stimuli" / f"{name}.toml"
    if not name.exists() and name.suffix == "" and len(name.parts) == 1 and shipped.exists():
        return shipped
    return name


@stimuli.command("show")
@click.argument("set_path", metavar="SET", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--size", default=112, show_default=True, type=click.IntRange(4, 2048),
              help="Image side in pixels (the rig's stimulus size).")
@click.option("--columns", default=16, show_default=True, type=click.IntRange(1), help="Images per row.")
@click.option("--max", "limit", default=None, type=click.IntRange(1), help="Show only the first N images.")
@click.option("--background", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Background grey, 0-1.")
def stimuli_show(set_path: Path, out: Path, size: int, columns: int, limit: int | None, background: float) -> None:
    """Render the stimulus set SET and write a captioned gallery of it to a PNG file."""
    from closedloop.stimuli import load_stimulus_set

    stimulus_set = load_stimulus_set(_stimulus_set_path(set_path))
    pool = stimulus_set.render(size, background)
    shown = len(pool) if limit is None else min(limit, len(pool))
    sheet = pool.gallery(columns, shown, title=f"{stimulus_set.info.name}: {len(pool)} stimuli, {size} px")
    try:
        sheet.save(out, format="PNG")
    except OSError as exc:
        raise ClosedLoopError(f"gallery {out}: cannot write ({exc.strerror or exc})") from None
    click.echo(f"{len(pool)} stimuli in {stimulus_set.path}; gallery of {shown} written to {out}")


# ---------------------------------------------------------------- compress --
@main.command("compress")
@click.option("--teacher", "teacher_path", required=True, type=click.Path(path_type=Path),
              help="Teacher: a published compact .pt, an .onnx, a TorchScript or a closedloop model file.")
@click.option("--images", "pool_path", default=None, type=click.Path(path_type=Path),
              help="Image pool: a stimulus set (.toml, or a shipped set's name such as demo), "
                   "a pool .npz, or a folder/.zip of natural images.")
@click.option("--generate", default=0, show_default=True, type=click.IntRange(0),
              help="Add N generated stimuli (contours, dots, gratings, textures) to the pool.")
@click.option("--output", default=0, show_default=True, type=click.IntRange(0),
              help="Which teacher output (neuron) the student learns.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Student file to write  [default: TEACHER-STEM.student.pt in this folder]")
@click.option("--filters", default=100, show_default=True, type=click.IntRange(1),
              help="Filters per layer of the student before pruning.")
@click.option("--threshold", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of each layer's output variance the kept filters must explain.")
@click.option("--images-n", default=1500, show_default=True, type=click.IntRange(1),
              help="Training images after augmentation.")
@click.option("--heldout", default=0.15, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of the pool held out for the accuracy figures.")
@click.option("--steps", default=80, show_default=True, type=click.IntRange(0), help="Distillation minibatches.")
@click.option("--prune-steps", default=15, show_default=True, type=click.IntRange(0),
              help="Retraining minibatches after each layer is pruned.")
@click.option("--final-steps", default=40, show_default=True, type=click.IntRange(0),
              help="Retraining minibatches at the end.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(2), help="Images per minibatch.")
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Adam step size.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the split, augmentation and training.")
def compress_command(teacher_path: Path, pool_path: Path | None, generate: int, output: int, out: Path | None,
                     filters: int, threshold: float, images_n: int, heldout: float, steps: int, prune_steps: int,
                     final_steps: int, batch: int, lr: float, seed: int) -> None:
    """Distil a teacher into a compact CNN, prune it filter by filter, retrain; print the figures."""
    import numpy as np

    from closedloop.model.compress import CompressConfig, compress_file, generated_images, load_pool

    if pool_path is None and not generate:
        raise ClosedLoopError("compress: give an image pool (--images POOL) or --generate N")
    parts, names = [], []
    if pool_path is not None:
        pool_path = _stimulus_set_path(pool_path)
        parts.append(load_pool(pool_path))
        names.append(str(pool_path))
    if generate:
        parts.append(generated_images(generate, seed))
        names.append(f"{generate} generated")
    config = CompressConfig(filters=filters, threshold=threshold, output=output, images_n=images_n,
                            heldout=heldout, steps=steps, prune_steps=prune_steps, final_steps=final_steps,
                            batch=batch, lr=lr, seed=seed)
    out = out or Path(f"{teacher_path.stem}.student.pt")

    def progress(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    result = compress_file(teacher_path, np.concatenate(parts), out, config, log=progress,
                           pool_name=f"image pool {' + '.join(names)}")
    click.echo(result.report())
    click.echo(f"student written to {out}")


# ----------------------------------------------------------------- inspect --
@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--pool", "pool_path", default=None, type=click.Path(path_type=Path),
              help="Images to rank: a stimulus set (.toml, or a shipped set's name), a saved pool (.npz), "
                   "or a folder or .zip of images.  [default: stimuli/demo.toml]")
@click.option("--output", default=0, show_default=True, type=int, help="Which output (neuron) of the model.")
@click.option("--steps", default=100, show_default=True, type=int,
              help="Gradient-ascent steps for the synthesised preferred image.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the synthesis.")
def inspect_model_command(model: Path, out: Path, pool_path: Path | None, output: int, steps: int,
                          seed: int) -> None:
    """Figure of MODEL: layer filters, top and bottom pool images, a synthesised preferred image.

    MODEL is a published compact model (.pt beside its .nums_filters.npy), an ONNX file (no filters
    or synthesis: those panels show a note), a TorchScript file or a closedloop model file.
    """
    from closedloop.model.inspect import inspect_model

    pool = None if pool_path is None else _stimulus_set_path(pool_path)
    result = inspect_model(model, out, pool=pool, output=output, steps=steps, seed=seed,
                           progress=lambda message: console.print(f"{message} ..."))
    click.echo(result.summary())
