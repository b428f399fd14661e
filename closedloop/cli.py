"""The ``closedloop`` command line."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from closedloop.config import load_protocol, load_rig, with_learner, with_metadata
from closedloop.dashboard import TOKEN_VARIABLE
from closedloop.errors import ClosedLoopError

PROJECT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)  # progress and notes
results = Console()  # tables the user asked for


def _printable(text: str) -> str:
    """``text`` with its control characters escaped (a newline in an argument stays on one line)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Command(click.Group):
    """Turns a ClosedLoopError into one line on stderr and exit status 2; a usage error (click's,
    exit status 2) keeps its message on one line too, whatever the arguments hold."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.message = _printable(exc.message)
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClosedLoopError as exc:
            click.echo(f"closedloop: error: {_printable(str(exc))}", err=True)
            sys.exit(2)
        except click.UsageError as exc:
            exc.message = _printable(exc.message)
            raise


@click.group(cls=_Command)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """Closed-loop visual neurophysiology: present, acquire, model, select, record."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _session_dir(out: Path, protocol, rig) -> Path:
    """A new session's directory: ``sub-<subject>_ses-<start>-<protocol>`` (see closedloop.record.naming)."""
    from closedloop.record.naming import session_dirname, session_id

    return out / session_dirname(session_id(protocol.protocol.name), rig.subject.id)


def _metadata_options(command):
    """``--subject-id`` ... ``--lab``: the archive's subject and lab fields, over the rig file's."""
    options = [
        click.option("--subject-id", help="Subject id (letters, digits, hyphens); over the rig's [subject] id."),
        click.option("--species", help="Subject species, Latin binomial (Macaca mulatta)."),
        click.option("--sex", type=click.Choice(["M", "F", "U", "O"]), help="Subject sex."),
        click.option("--age", help="Subject age, ISO 8601 duration (P7Y)."),
        click.option("--experimenter", multiple=True, help="'Last, First'; repeat for several."),
        click.option("--institution", help="Institution."),
        click.option("--lab", help="Lab."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _metadata(options: dict) -> dict:
    """The ``_metadata_options`` given, as ``with_metadata``'s subject and lab fields."""
    subject = {"id": options.pop("subject_id"), "species": options.pop("species"), "sex": options.pop("sex"),
               "age": options.pop("age")}
    lab = {"experimenter": list(options.pop("experimenter")) or None, "institution": options.pop("institution"),
           "lab": options.pop("lab")}
    return {"subject": {k: v for k, v in subject.items() if v is not None},
            "lab": {k: v for k, v in lab.items() if v is not None}}


def _learner_options(command):
    """``--learner`` and ``--ray-address``: where the model worker runs, over the rig's ``[learner]``."""
    options = [
        click.option("--learner", type=click.Choice(["process", "ray"]), default=None,
                     help="Where the model worker runs: a child process, or a Ray actor.  [default: the rig's "
                          "[learner], else process]"),
        click.option("--ray-address", default=None,
                     help="The Ray cluster of a Ray learner: auto, HOST:6379, or ray://HOST:10001 (Ray Client); "
                          "implies --learner ray.  [default: the rig's [learner] address, else a local Ray]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8765
TOKEN_HELP = ("Secret every dashboard request must carry (?token= or Authorization: Bearer); required with a "
              "--host beyond this machine.")


def _listen_options(command, token_variable: str | None = None):
    """``--host``, ``--port``, ``--token`` (also read from the environment variable ``token_variable``):
    where the dashboard listens, and its token."""
    options = [
        click.option("--host", default=None, help=f"Address the dashboard listens on.  [default: {DASHBOARD_HOST}; "
                                                   "another needs --token]"),
        click.option("--port", type=click.IntRange(0, 65535), default=None,
                     help=f"Dashboard port (0: any free one).  [default: {DASHBOARD_PORT}]"),
        click.option("--token", envvar=token_variable, default=None, help=TOKEN_HELP),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _dashboard_options(command):
    """``--dashboard`` and where it listens."""
    return click.option("--dashboard", is_flag=True,
                        help="Serve a live page of the session (see `closedloop watch`) and print its address.")(
        _listen_options(command))


@contextlib.contextmanager
def _dashboard(session: Path, wanted: bool, host: str | None, port: int | None, token: str | None):
    """The dashboard of ``session`` in a child process while the block runs, when ``wanted``."""
    if not wanted:
        given = [name for name, value in (("--host", host), ("--port", port), ("--token", token)) if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} needs --dashboard")
        yield
        return
    from closedloop.dashboard.child import Dashboard

    dashboard = Dashboard(session, host or DASHBOARD_HOST, DASHBOARD_PORT if port is None else port, token)
    console.print(f"dashboard: {dashboard.url}", markup=False)
    try:
        yield
    finally:
        dashboard.close((session / "summary.json").exists())


def _progress_view(progress, title: str) -> Group:
    """The live view of a session (:class:`closedloop.progress.Progress`): a progress bar with the
    time left, the loop's state, and one line per unit."""
    from closedloop.progress import RECENT_DECISIONS, RECENT_RESPONSES, SPIKE_WINDOW

    left = progress.time_left_s()
    bar = Table(title=title, show_header=False, box=None, padding=(0, 2))
    bar.add_row(ProgressBar(total=progress.total, completed=progress.presented, width=40),
                f"{progress.presented}/{progress.total} presented",
                "time left: measuring" if left is None else f"{_duration(left)} left")
    table = Table(show_header=False, box=None)
    table.add_row("responses", str(progress.responses))
    turnaround, rates, lag = progress.recent_turnaround_ms(), progress.spike_rates(), progress.stream_lag_ms()
    table.add_row("selection turnaround", "-" if turnaround is None else
                  f"{turnaround:.1f} ms (median of the last {RECENT_DECISIONS} decisions)")
    table.add_row("spike rate", "-" if rates is None else f"{float(rates.sum()):.1f} spikes/s (all units)")
    table.add_row("spike stream", {"ok": "ok", "gap": "[yellow]gap: waiting for it to return[/]",
                                   "lost": "[red]lost[/]"}[progress.stream]
                  + ("" if lag is None else f", lag {lag:.0f} ms"))
    table.add_row("deadline misses", str(progress.deadline_misses))
    table.add_row("dropped frames", str(progress.dropped_frames))
    t = progress.trials
    table.add_row("trials", f"{t['completed']} completed, {t['fixation_break']} fixation breaks, "
                            f"{t['no_fixation']} without fixation")
    table.add_row("learner refreshes", str(progress.core_version))
    table.add_row("held-out r, median of units", f"{_fmt(progress.r_observed)} observed, "
                                                 f"{_fmt(progress.r_true)} true rates")
    for key, value in (progress.strategy_state or {}).items():  # e.g. a hypothesis test's posterior
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) if isinstance(value, dict) else _fmt(value)
        table.add_row(key.replace("_", " "), shown)
    units = Table(box=None, padding=(0, 2), caption=f"spikes/s over the last {SPIKE_WINDOW:g} s; mean count of "
                  f"the last {RECENT_RESPONSES} responses; held-out r against the observed counts and the true rates")
    for column in ("unit", "spikes/s", "mean count", "r observed", "r true"):
        units.add_column(column, justify="left" if column == "unit" else "right")
    counts, accuracy = progress.mean_recent_counts(), progress.final_accuracy
    none = [None] * len(progress.units)
    for u, (name, r_observed, r_true) in enumerate(zip(progress.units, accuracy.get("r_observed") or none,
                                                       accuracy.get("r_true") or none)):
        units.add_row(name, "-" if rates is None else f"{float(rates[u]):.1f}",
                      "-" if counts is None else _fmt(float(counts[u])), _fmt(r_observed), _fmt(r_true))
    return Group(bar, table, units)


def _duration(seconds: float) -> str:
    """``h:mm:ss``."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _run(protocol, rig, session: Path, title: str, resume: bool = False) -> dict:
    """Run a new session in the directory ``session`` (or resume it) with a live progress display;
    Ctrl-C ends it with its summary written, as a one-line error."""
    from closedloop.session import run_session

    shown = []  # the session's Progress, once it reported

    def show(progress) -> None:  # in the presentation loop: rich's own thread draws the view
        if not shown:
            shown.append(progress)

    def view():
        return _progress_view(shown[0], title) if shown else Text()  # nothing before the session opened

    try:
        with Live(console=console, get_renderable=view, refresh_per_second=4, transient=False):
            summary = run_session(protocol, rig, session, resume=resume, on_progress=show)
    except KeyboardInterrupt:
        raise ClosedLoopError(f"interrupted; session recorded in {session} (status interrupted)") from None
    finally:
        if shown and not console.is_terminal:  # rich leaves a redirected stream after the view's last row
            console.line()
    console.print(f"session recorded in {session}")
    if (summary.get("learner") or {}).get("where") == "ray":
        console.print(f"model worker: {_learner(summary['learner'])}", markup=False)
    if summary["status"] != "complete":
        console.print(f"the run ended early: {summary['status'].replace('_', ' ')}")
    return summary


@main.command()
@click.argument("protocol", type=click.Path(path_type=Path))
@click.option("--rig", "rig_path", required=True, type=click.Path(path_type=Path), help="Rig file (TOML).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("sessions"), show_default=True,
              help="Directory that receives the session directory.")
@click.option("--strategy", default=None, help="Override the protocol's selection strategy.")
@_learner_options
@_metadata_options
@_dashboard_options
def run(protocol: Path, rig_path: Path, out: Path, strategy: str | None, learner: str | None,
        ray_address: str | None, dashboard: bool, host: str | None, port: int | None, token: str | None,
        **metadata) -> None:
    """Run PROTOCOL on a rig; prints the session summary as JSON."""
    import json

    proto = _with_strategy(load_protocol(protocol), strategy)
    rig = with_learner(with_metadata(load_rig(rig_path), **_metadata(metadata)), learner, ray_address)
    session = _session_dir(out, proto, rig)
    with _dashboard(session, dashboard, host, port, token):
        summary = _run(proto, rig, session, f"{proto.protocol.name} ({proto.selection.strategy})")
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("session", type=click.Path(path_type=Path))
@_learner_options
@_dashboard_options
def resume(session: Path, learner: str | None, ray_address: str | None, dashboard: bool, host: str | None,
           port: int | None, token: str | None) -> None:
    """Continue SESSION where it stopped (a killed or failed run), with its own protocol and rig (the
    learner may run elsewhere this time)."""
    import json

    protocol = load_protocol(session / "protocol.json")
    rig = with_learner(load_rig(session / "rig.json"), learner, ray_address)
    with _dashboard(session, dashboard, host, port, token):
        summary = _run(protocol, rig, session, f"{protocol.protocol.name} (resumed)", resume=True)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("session", type=click.Path(path_type=Path))
@functools.partial(_listen_options, token_variable=TOKEN_VARIABLE)
@click.option("--fd", type=int, default=None, hidden=True, help="A listening socket to serve on (a session's).")
@click.option("--wait", is_flag=True, hidden=True, help="SESSION may not exist yet (a session about to start).")
def watch(session: Path, host: str | None, port: int | None, token: str | None, fd: int | None, wait: bool) -> None:
    """Serve the live dashboard of SESSION: a session another process is writing (a shared folder
    on another machine), or one that ended. Read-only; Ctrl-C stops it."""
    import socket

    from closedloop.children import die_with_parent, ignore_sigint
    from closedloop.dashboard.server import bind, serve, url

    host = host or DASHBOARD_HOST
    if not wait and not session.is_dir():
        raise ClosedLoopError(f"session {session}: not a directory")
    if fd is not None:  # started by a session, on its socket
        die_with_parent(os.getppid())
        ignore_sigint()
        serve(session, socket.socket(fileno=fd), host, token, child=True)
        return
    sock = bind(host, DASHBOARD_PORT if port is None else port, token)
    console.print(f"dashboard of {session}: {url(sock, host, token)} (Ctrl-C to stop)", markup=False)
    serve(session, sock, host, token)


@main.command()
@click.argument("session", type=click.Path(path_type=Path))
@click.option("--nwb", "nwb_path", default=None, type=click.Path(path_type=Path),
              help="NWB file to write.  [default: sub-<subject>/sub-<subject>_ses-<session>_<modalities>.nwb "
                   "beside SESSION, as DANDI's organize names it]")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@_metadata_options
def export(session: Path, nwb_path: Path | None, overwrite: bool, **metadata) -> None:
    """Write SESSION as NWB an archive (DANDI) accepts: subject, units and electrodes, presentations,
    trials, stimulus images, gaze and other streams, decisions, protocol and rig. Subject and lab
    fields come from the session's rig.json; the options below replace them."""
    from closedloop.record.nwb import export_nwb

    console.print(f"wrote {export_nwb(session, nwb_path, overwrite=overwrite, **_metadata(metadata))}")


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
    """The protocol with another selection strategy (the session builds and checks it)."""
    if strategy is None:
        return protocol
    params = protocol.selection.params if strategy == protocol.selection.strategy else {}
    selection = protocol.selection.model_copy(update={"strategy": strategy, "params": params})
    return protocol.model_copy(update={"selection": selection})


@main.command()
@click.option("--rig", "rig_path", required=True, type=click.Path(path_type=Path), help="Simulated rig file.")
@click.option("--stimuli", required=True, type=click.Path(path_type=Path),
              help="Stimulus file (.npz, as written to a session's stimuli.npz).")
@click.option("--session-id", default=None,
              help="Serve this session only: its marker stream and the outlets here are pinned by the "
                   "session's source_ids (closedloop-<kind>-ID).")
def simulate(rig_path: Path, stimuli: Path, session_id: str | None) -> None:
    """Simulated acquisition: answer the marker stream with Poisson spikes over LSL; ends with its
    parent process."""
    from closedloop.checks import check_rig
    from closedloop.children import die_with_parent, ignore_sigint
    from closedloop.record.session import ADDED
    from closedloop.simulate.rig import SpikeSimulator
    from closedloop.stimuli import StimulusPool

    rig = load_rig(rig_path)
    if not rig.rig.simulated:
        raise ClosedLoopError(f"rig file {rig_path}: field 'rig.simulated': this rig is not simulated")
    check_rig(rig)
    die_with_parent(os.getppid())  # started by a session: its start set this already, race-free
    if session_id is not None:
        ignore_sigint()  # the session stops its simulator
    simulator = SpikeSimulator(rig, StimulusPool.load(stimuli), added=stimuli.parent / ADDED, session_id=session_id)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"simulating {simulator.n} neurons on LSL stream {rig.spikes.name!r}")
    try:
        simulator.run(stop)
    except KeyboardInterrupt:
        pass
    console.print(f"sent {simulator.spikes_sent} spikes; unknown stimuli: {simulator.unknown_stimuli}")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("sessions"), show_default=True)
@click.option("--protocol", "protocol_path", type=click.Path(path_type=Path),
              default=PROJECT / "protocols" / "demo.toml", show_default=True)
@click.option("--rig", "rig_path", type=click.Path(path_type=Path),
              default=PROJECT / "rigs" / "sim.toml", show_default=True)
@_learner_options
@_metadata_options
def demo(out: Path, protocol_path: Path, rig_path: Path, learner: str | None, ray_address: str | None,
         **metadata) -> None:
    """The closed loop on the simulated rig: model-chosen images against random ones."""
    protocol = load_protocol(protocol_path)
    rig = with_learner(with_metadata(load_rig(rig_path), **_metadata(metadata)), learner, ray_address)
    summaries = [
        _run(_with_strategy(protocol, strategy), rig, _session_dir(out, protocol, rig), f"demo: {strategy}")
        for strategy in dict.fromkeys([protocol.selection.strategy, "random"])
    ]
    results.print(comparison_table(summaries))
    for s in summaries:
        results.print(f"{s['strategy']}: {s['deadline_misses']} deadline misses, selection turnaround "
                      f"median {_fmt(s['turnaround_ms']['median'])} ms, core {s['core']}, learner "
                      f"{_learner(s['learner'])}, session {s['session']}",
                      markup=False, soft_wrap=True)


def _learner(where: dict | None) -> str:
    """Where a session's model worker ran, in words (a Ray actor: its node and Ray's version)."""
    if not where or where["where"] == "process":
        return "a process"
    return f"a Ray actor on {where.get('node', '?')} ({where.get('ray')})"


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
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------- stimuli --
@main.group()
def stimuli() -> None:
    """Stimulus sets (TOML files in stimuli/)."""


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
    from closedloop.stimuli.load import shipped_set

    stimulus_set = load_stimulus_set(shipped_set(set_path))
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
@click.option("--budget", default=None, type=click.IntRange(1000),
              help="Most parameters the pruned student may keep (filters go, cheapest first, until it fits).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the split, augmentation and training.")
def compress_command(teacher_path: Path, pool_path: Path | None, generate: int, output: int, out: Path | None,
                     filters: int, threshold: float, images_n: int, heldout: float, steps: int, prune_steps: int,
                     final_steps: int, batch: int, lr: float, budget: int | None, seed: int) -> None:
    """Distil a teacher into a compact CNN, prune it filter by filter, retrain; print the figures."""
    import numpy as np

    from closedloop.model.compress import CompressConfig, compress_file, generated_images, resize_images
    from closedloop.stimuli.load import load_pool, shipped_set

    if pool_path is None and not generate:
        raise ClosedLoopError("compress: give an image pool (--images POOL) or --generate N")
    parts, names = [], []
    if pool_path is not None:
        pool, _ = load_pool(pool_path)
        parts.append(resize_images(pool.images))  # a saved pool keeps its own size
        names.append(str(shipped_set(pool_path)))
    if generate:
        parts.append(generated_images(generate, seed))
        names.append(f"{generate} generated")
    config = CompressConfig(filters=filters, threshold=threshold, output=output, images_n=images_n,
                            heldout=heldout, steps=steps, prune_steps=prune_steps, final_steps=final_steps,
                            batch=batch, lr=lr, budget=budget, seed=seed)
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
    or synthesis: those panels show a note), a TorchScript file, a closedloop model file or a learner
    checkpoint.
    """
    from closedloop.learn import open_image_model
    from closedloop.model.inspect import inspect_model

    result = inspect_model(open_image_model(model), out, pool=pool_path, output=output, steps=steps, seed=seed,
                           progress=lambda message: console.print(f"{message} ..."))
    click.echo(result.summary())


# ------------------------------------------------------------------- bench --
class _Benchmarks(click.Group):
    """``closedloop bench``: the harnesses that live in their own modules are imported only when
    asked for (the fuzz harness needs hypothesis, a test extra)."""

    harnesses = {"fuzz": "closedloop.benchmarks.fuzz:fuzz_command",
                 "faults": "closedloop.benchmarks.faults:faults_command"}

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.harnesses])

    def get_command(self, ctx, name):
        if name not in self.harnesses:
            return super().get_command(ctx, name)
        import importlib

        module, attribute = self.harnesses[name].split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            raise click.UsageError(f"closedloop bench {name} needs {exc.name}: "
                                   "pip install -r requirements.lock -e '.[test]'") from None


@main.group(cls=_Benchmarks)
def bench() -> None:
    """Benchmarks on digital twins and harnesses that attack the product: they print figures
    (medians and ratios), nothing is asserted."""


@bench.command("efficiency")
@click.option("--twins", "twins_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of compact models (the published format) to use as digital twins.")
@click.option("--pool", "pool_paths", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Candidate images: a stimulus set, a saved pool (.npz), or a folder or .zip of images "
                   "(repeat to combine; duplicate images are dropped).")
@click.option("--heldout", "heldout_path", required=True, type=click.Path(path_type=Path),
              help="Held-out images the learner is scored on (never shown).")
@click.option("--features", "features_dir", default=None, type=click.Path(path_type=Path),
              help="Folder of compact models whose cores make the learner's features "
                   "[default: models of the twin folder that are not evaluated].")
@click.option("--limit", default=12, show_default=True, type=click.IntRange(1), help="Twins evaluated.")
@click.option("--core-models", default=4, show_default=True, type=click.IntRange(1),
              help="Models whose cores make the features.")
@click.option("--heldout-limit", default=300, show_default=True, type=click.IntRange(3),
              help="Held-out images used (the first N).")
@click.option("--strategies", "strategy_text",
              default='disagreement;info_gain;max_response;adept;gaudy;variance_reduction;'
                      'vr-heldout=variance_reduction:{"target": "heldout"}',
              show_default=True, help="Strategies besides random, ';'-separated, each [LABEL=]NAME[+CONTROL][:{json params}] "
                                      "(CONTROL: the fraction of trials given to random control images; the held-out images are the "
                                      "pool family 'heldout', a variance_reduction target).")
@click.option("--budget", default=400, show_default=True, type=click.IntRange(8), help="Trials per session.")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1), help="Images per decision.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(1), help="Sessions per strategy.")
@click.option("--target", default=None, type=float,
              help="Held-out r to reach [default: the r random reaches at the full budget].")
@click.option("--cache", default=None, type=click.Path(path_type=Path),
              help="Folder to keep the twins' rates and the core features between runs.")
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path), help="Also write the results.")
def bench_efficiency(twins_dir: Path, pool_paths: tuple[Path, ...], heldout_path: Path, features_dir: Path | None, limit: int,
                     core_models: int, heldout_limit: int, strategy_text: str, budget: int, batch: int, seeds: int,
                     target: float | None, cache: Path | None, json_path: Path | None) -> None:
    """Trials each strategy needs to reach a held-out accuracy target on digital twins, against random."""
    from closedloop.benchmarks.efficiency import efficiency_from_paths, parse_arms

    arms = parse_arms(strategy_text)
    report = efficiency_from_paths(twins_dir, pool_paths, heldout_path, features_dir, limit, core_models,
                                   heldout_limit, arms, budget, batch, seeds, target,
                                   cache, log=lambda message: console.print(message))
    click.echo(report.table())
    if json_path is not None:
        report.write_json(json_path)


@bench.command("hypotheses")
@click.option("--pool", "pool_path", default=None, type=click.Path(path_type=Path),
              help="Stimuli the designs show (a stimulus set, saved pool or image folder) "
                   "[default: the 366 standard shapes, 125 dots and 108 gratings].")
@click.option("--neurons", default=10, show_default=True, type=click.IntRange(1),
              help="Synthetic neurons per group (per hypothesis, per left-out hypothesis, per rig kind).")
@click.option("--threshold", default=0.95, show_default=True, type=click.FloatRange(0.5, 1, max_open=True),
              help="Posterior probability that decides.")
@click.option("--budget", default=None, type=click.IntRange(1),
              help="Responses per adaptive test  [default: 500; with --twins, the full design's over 5].")
@click.option("--twins", "twins_dir", default=None, type=click.Path(path_type=Path),
              help="A folder of published compact models: test twins of them, adaptive against the full "
                   "fixed design (every stimulus 5 times), instead of synthetic neurons.")
@click.option("--limit", default=6, show_default=True, type=click.IntRange(1),
              help="With --twins: twins drawn from the folder.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path),
              help="Also write every run and the figures as JSON.")
def bench_hypotheses(pool_path: Path | None, neurons: int, threshold: float, budget: int | None,
                     twins_dir: Path | None, limit: int, seed: int, json_path: Path | None) -> None:
    """Verdicts and trials to decision of the adaptive hypothesis test: on synthetic neurons against a
    fixed design (every stimulus of the pool in random order), with the false-decision rate; or, with
    --twins, on compact-model twins against the full fixed design."""
    from closedloop.benchmarks import hypotheses as bench_module

    pool = bench_module.load_bench_pool(pool_path, twins=twins_dir is not None)
    if twins_dir is not None:
        result = bench_module.run_twin_bench(twins_dir, pool, limit, threshold, budget, seed=seed,
                                             progress=lambda run: console.print(
                                                 f"twin {run.twin}: full design {run.full or 'undecided'}, "
                                                 f"adaptive {run.adaptive or 'undecided'} after {run.trials}"))
        click.echo(bench_module.format_twin_bench(result))
    else:
        result = bench_module.run_hypothesis_bench(pool, neurons, threshold, budget or 500, seed=seed,
                                                   progress=lambda run: console.print(
                                                       f"{run.design} test of a {run.group} neuron: "
                                                       f"{run.decided or 'undecided'} after {run.trials} responses"))
        click.echo(bench_module.format_hypothesis_bench(result))
    if json_path is not None:
        bench_module.write_json(result, json_path)


# ------------------------------------------------------------------ replay --
# (owned by the replay helper: `closedloop replay`, `closedloop republish`, `closedloop convert`)
@main.command("replay")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--strategy", default=None,
              help="Also ask this strategy at every decision, and score both choices with a digital twin.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for replay.json and decisions.jsonl.  [default: replays/SOURCE-NAME]")
@click.option("--seed", type=int, default=None, help="Seed of the model and strategy streams.  "
              "[default: the session's, which reproduces its decisions]")
@click.option("--protocol", "protocol_path", type=click.Path(path_type=Path), default=None,
              help="A recording made elsewhere: the protocol (window, model, selection) to replay it with.")
@click.option("--pool", "pool_path", type=click.Path(path_type=Path), default=None,
              help="A recording made elsewhere: the pool (.npz or a session directory) its stimulus ids name.")
@click.option("--events", default=None, help="neo files: the event or epoch channel with the onsets.")
@click.option("--log", "log_path", default=None, type=click.Path(path_type=Path),
              help="neo files: a stimulus log (.jsonl or .csv) on the recording's clock instead.")
@click.option("--every", type=click.IntRange(1), default=None,
              help="Fast mode: a decision every N responses instead of the session's own batches "
                   "(decisions are not reproduced).  [default for recordings without decisions: the "
                   "protocol's selection.batch]")
@click.option("--refresh-every", default=50, show_default=True, type=click.IntRange(1),
              help="Fast mode: responses between learner refreshes swapped in.")
@click.option("--accuracy-every", default=10, show_default=True, type=click.IntRange(1),
              help="Fast mode: responses between accuracy reports.")
@click.option("--twin-epochs", default=20, show_default=True, type=click.IntRange(1),
              help="Passes over the responses when fitting the digital twin.")
def replay_command(source: Path, strategy: str | None, out: Path | None, seed: int | None,
                   protocol_path: Path | None, pool_path: Path | None, events: str | None, log_path: Path | None,
                   every: int | None, refresh_every: int, accuracy_every: int, twin_epochs: int) -> None:
    """Replay SOURCE through the live alignment, model and strategy, as fast as the machine allows.

    SOURCE is a session directory (its decisions are made again and checked against the log),
    a closedloop NWB export, or any recording `closedloop responses` reads. Writes replay.json
    and decisions.jsonl and prints a short table.
    """
    from closedloop.replay.session_replay import Cadence, replay
    from closedloop.replay.sources import open_source

    options = {k: v for k, v in (("events", events), ("log", log_path)) if v is not None}
    opened = open_source(source, protocol_path, pool_path, **options)
    cadence = Cadence.of(opened, every, refresh_every, accuracy_every)
    out = out or Path("replays") / source.stem
    with console.status(f"replaying {source} ..."):
        report = replay(opened, out, strategy, seed, cadence, twin_epochs)
    for table in replay_tables(report):
        results.print(table)
    for note in report["notes"]:
        console.print(f"note: {note}", markup=False)
    console.print(f"replay report in {out / 'replay.json'}, decisions in {out / 'decisions.jsonl'}")


def replay_tables(report: dict) -> list[Table]:
    """What a replay found (decisions reproduced, accuracy, speed) and, with an alternative
    strategy, the twin's predicted responses to both choices per unit."""
    import numpy as np

    table = Table(title=f"replay of {report['source']}", show_header=False, box=None)
    if report["pacing"] == "recorded":
        accuracy = report["accuracy_reports"]
        table.add_row("decisions reproduced", f"{report['reproduced']} of {report['logged_decisions']} logged"
                      + (f" (first divergence: decision {report['first_divergence']})"
                         if report["first_divergence"] is not None else ""))
        table.add_row("accuracy reports equal", f"{accuracy['equal']} of {accuracy['compared']} compared")
    else:
        pacing = report["pacing"]
        table.add_row("pacing", f"a decision every {pacing['every']} responses, refreshes every "
                                f"{pacing['refresh_every']}, accuracy every {pacing['accuracy_every']} "
                                "(decisions not reproduced)")
    table.add_row("responses", f"{report['responses']} ({report['trained_on']} trained on), "
                               f"{report['decisions']} decisions")
    r = [v for v in (report["accuracy"] or {}).get("r_observed") or [] if v is not None]
    table.add_row("held-out r (observed)", ", ".join(_fmt(v) for v in r) if len(r) <= 8 else
                  f"median {np.median(r):.2f} over {len(r)} units ({min(r):.2f} to {max(r):.2f})")
    seconds = report["seconds"]
    table.add_row("speed", f"{_fmt(report['speed'])}x real time ({report['session_s']:.0f} s replayed in "
                           f"{seconds['total']:.1f} s: alignment {seconds['alignment']:.1f}, model "
                           f"{seconds['model']:.1f} of which learner refreshes {seconds['refresh']:.1f}, "
                           f"selection {seconds['selection']:.1f})")
    alternative = report.get("alternative")
    if not alternative or not alternative["decisions"]:
        return [table]
    twin = alternative["twin"]
    table.add_row("alternative", f"{alternative['strategy']} at {alternative['decisions']} decisions: overlap "
                                 f"{alternative['overlap']:.2f}, the twin predicts more spikes for it at "
                                 f"{alternative['alternative_higher']:.0%} of them")
    table.add_row("digital twin", f"trained on {twin['trained_on']} responses ({twin['epochs']} epochs), "
                                  f"tested on {twin['heldout']['images']} held-out images")
    units = Table(title="twin's predicted spikes per presentation, mean over decisions")
    for column in ("unit", f"online ({report['strategy']})", alternative["strategy"], "twin held-out r"):
        units.add_column(column, justify="left" if column == "unit" else "right")
    for name, mine, theirs, r in zip(report["units"], alternative["online_per_unit"],
                                     alternative["alternative_per_unit"], twin["heldout"]["r"]):
        units.add_row(name, _fmt(mine), _fmt(theirs), _fmt(r))
    return [table, units]


@main.command("republish")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Multiple of real time.")
@click.option("--spikes", "spikes_name", default="closedloop-spikes", show_default=True,
              help="Name of the spike outlet (type Spikes; the rig file's [spikes] name to feed a live session).")
@click.option("--markers", "markers_name", default="closedloop-markers", show_default=True,
              help="Name of the marker outlet (type Markers).")
@click.option("--wait", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait for a consumer on both outlets (LabRecorder, a live inlet) before starting.")
@click.option("--events", default=None, help="neo files: the event or epoch channel with the onsets.")
@click.option("--log", "log_path", default=None, type=click.Path(path_type=Path),
              help="neo files: a stimulus log (.jsonl or .csv) on the recording's clock instead.")
def republish_command(source: Path, speed: float, spikes_name: str, markers_name: str, wait: float,
                      events: str | None, log_path: Path | None) -> None:
    """Send SOURCE's spikes and stimulus markers as LSL streams, in real time (or --speed times faster).

    SOURCE is a session directory, a closedloop NWB export or any recording `closedloop responses`
    reads. Spikes go out in the live spike stream's format, markers as closedloop's JSON markers,
    stamped on this machine's clock as if the recording were happening now.
    """
    from closedloop.config import StreamSpec
    from closedloop.replay.republish import republish
    from closedloop.replay.sources import open_recording

    options = {k: v for k, v in (("events", events), ("log", log_path)) if v is not None}
    recording = open_recording(source, **options)
    spikes, markers = StreamSpec(name=spikes_name, type="Spikes"), StreamSpec(name=markers_name, type="Markers")
    times = [*recording.spikes["time"][[0, -1]], *(p["onset"] for p in recording.presentations)] \
        if len(recording.spikes) else [p["onset"] for p in recording.presentations]
    console.print(f"republishing {len(recording.spikes)} spikes of {len(recording.units)} units and "
                  f"{len(recording.presentations)} presentations on LSL streams {spikes_name!r} and "
                  f"{markers_name!r}: {(max(times) - min(times)) / speed:.1f} s at {speed:g}x", markup=False)
    stop = threading.Event()
    try:
        published = republish(recording, spikes, markers, speed, wait, stop=stop)
    except KeyboardInterrupt:
        stop.set()
        raise click.Abort() from None
    click.echo(f"sent {published.spikes} spikes and {published.markers} markers; recording time t went out "
               f"stamped {published.start:.6f} + (t - {published.first:.6f}) / {speed:g} s (LSL clock)")


@main.group("convert")
def convert() -> None:
    """Recordings made elsewhere, written as closedloop session directories."""


@convert.command("v4")
@click.option("--session", default="210325", show_default=True,
              help="Session of the shared V4 data (210325 has single-trial counts).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="The shared V4 folder.  [default: $CLOSEDLOOP_SHARED_V4, else ../shared/v4 beside the project]")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Session directory to create.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the presentation order, the spike times and the held-out images.")
@click.option("--images", default=None, type=click.IntRange(1), help="Only the first N images.")
def convert_v4_command(session: str, data: Path | None, out: Path, seed: int, images: int | None) -> None:
    """Write a real V4 session's single-trial counts as a session directory (to replay, export, report).

    Each (image, repeat) is one presentation, in a seeded random order at a fixed timing; a count
    of k spikes becomes k spike times drawn uniformly in the 50-150 ms response window (the real
    spike times are unknown). See closedloop/replay/convert.py.
    """
    from closedloop.replay.convert import convert_v4

    data = data or Path(os.environ.get("CLOSEDLOOP_SHARED_V4", PROJECT.parent / "shared" / "v4"))
    summary = convert_v4(data, session, out, seed, images)
    click.echo(f"{summary['presentations']} presentations of {len(summary['units'])} neurons "
               f"({summary['spikes']} spikes, {summary['duration_s']:.0f} s) written to {out}")


# ------------------------------------------------------------------ core --
# (owned by the learner-tests helper: `closedloop core build`, `closedloop core show`)
@main.group("core")
def core_group() -> None:
    """Learner cores: build a shared core from recorded sessions, show what a core is."""


@core_group.command("build")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--session", "session_paths", multiple=True, nargs=2, type=click.Path(path_type=Path),
              metavar="IMAGES RESPONSES",
              help="A session: its images (zip or folder, in response order) and its (neurons, images) "
                   ".npy of repeat-averaged spike counts; repeatable.")
@click.option("--v4", "v4_folder", default=None, type=click.Path(path_type=Path),
              help="Shared V4 folder: with --name N, reads sessions/images_N.zip and "
                   "sessions/responses_repeat_averaged_N.npy.")
@click.option("--name", "names", multiple=True, help="A session of the --v4 folder (e.g. 190923); repeatable.")
@click.option("--students", "student_folders", multiple=True, type=click.Path(path_type=Path),
              help="A folder of compact students (`closedloop teacher distil`'s OUT/students) whose predicted "
                   "counts on the --images pool are one more session; repeatable.")
@click.option("--images", "images_path", default=None, type=click.Path(path_type=Path),
              help="With --students: the pool they predict (a stimulus set, .npz, folder or zip of images).")
@click.option("--channels", default="48,57,32,32,32", show_default=True,
              help="Filters of the core's five layers.")
@click.option("--input-px", default=56, show_default=True, type=click.IntRange(16, 512),
              help="Side images are resized to (112 is the paper's; 56 is four times cheaper on a CPU).")
@click.option("--grid", default=7, show_default=True, type=click.IntRange(1, 64),
              help="Blocks per side the last maps are averaged to (the protocol's [model.core] grid).")
@click.option("--epochs", default=40, show_default=True, type=click.IntRange(1), help="At most this many epochs.")
@click.option("--patience", default=5, show_default=True, type=click.IntRange(1),
              help="Stop after this many epochs without a better held-out r.")
@click.option("--heldout", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of each session's images held out.")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(2), help="Images per minibatch.")
@click.option("--lr", default=3e-3, show_default=True, type=click.FloatRange(0, min_open=True), help="Adam step size.")
@click.option("--threads", default=None, type=click.IntRange(1), help="Torch threads (default: torch's).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the weights, split and minibatches.")
def core_build(out: Path, session_paths: tuple[tuple[Path, Path], ...], v4_folder: Path | None,
               names: tuple[str, ...], student_folders: tuple[Path, ...], images_path: Path | None, channels: str, input_px: int, grid: int, epochs: int, patience: int,
               heldout: float, batch: int, lr: float, threads: int | None, seed: int) -> None:
    """Train one shared compact core on recorded sessions (and students' predictions) and write it
    to OUT (a core file for `[model.core] kind = "file"`)."""
    import torch

    from closedloop.learn.build import build_core, parse_channels, students_session
    from closedloop.model.recorded import read_session, v4_sessions

    try:
        filters = parse_channels(channels)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--channels") from None
    if names and v4_folder is None:
        raise click.UsageError("--name needs --v4 FOLDER")
    if v4_folder is not None and not names:
        raise click.UsageError("--v4 needs at least one --name SESSION")
    if bool(student_folders) != (images_path is not None):
        raise click.UsageError("--students and --images go together")
    given = [(images, responses, None) for images, responses in session_paths]
    given += v4_sessions(v4_folder, list(names)) if v4_folder is not None else []
    if not given and not student_folders:
        raise click.UsageError("give at least one --session IMAGES RESPONSES (or --v4 FOLDER --name N, or "
                               "--students FOLDER --images POOL)")
    if threads is not None:
        torch.set_num_threads(threads)
    sessions = []
    for images, responses, name in given:
        session = read_session(images, responses, name)
        merged = session.files - len(session.images)
        console.print(f"session {session.name}: {session.neurons} neurons, {len(session.images)} images"
                      + (f" ({merged} repeated files merged)" if merged else ""))
        sessions.append(session)
    if student_folders:
        from closedloop.model.compress import resize_images
        from closedloop.stimuli.load import load_pool

        pool = resize_images(load_pool(images_path)[0].images)
        for folder in student_folders:
            session = students_session(folder, pool)
            console.print(f"{session.name}: {session.neurons} students on {len(pool)} images")
            sessions.append(session)
    provenance = build_core(sessions, out, filters, input_px, grid, epochs, patience, heldout, batch, lr,
                            seed=seed, log=console.print)
    click.echo(f"core written to {out}: held-out r {provenance['heldout_r']:.3f} "
               f"({provenance['neurons']} neurons, {provenance['epochs']} epochs, {provenance['seconds']:.0f} s)")


@core_group.command("show")
@click.argument("path", type=click.Path(path_type=Path))
def core_show(path: Path) -> None:
    """Show what PATH is: a core file (its filters, parameters, provenance) or a protocol's [model.core]."""
    from closedloop.learn.build import describe

    table = Table(show_header=False, box=None)
    for key, value in describe(path):
        table.add_row(key, value)
    results.print(table)


# ------------------------------------------------------------------ design --
# (owned by the report helper: `closedloop design`)
@main.command("design")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="Model: a learner checkpoint (a session's checkpoints/learner-final.pt: ranks with its "
                   "posterior), or a published compact .pt, an .onnx, a TorchScript file, a closedloop model.")
@click.option("--pool", "pool_path", required=True, type=click.Path(path_type=Path),
              help="Candidates: a stimulus set (.toml, or a shipped set's name such as demo), a saved pool "
                   "(.npz), or a folder or .zip of images.")
@click.option("-n", "n", required=True, type=click.IntRange(1), help="Stimuli in the designed set.")
@click.option("--strategy", required=True, help="Selection strategy that chooses them (e.g. disagreement).")
@click.option("--params", "params_texts", multiple=True,
              help="Strategy settings: a JSON object or key=value (value read as JSON, else text); repeatable.")
@click.option("--control-fraction", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of control images mixed in.")
@click.option("--control", default="random", show_default=True, type=click.Choice(["random", "gaudy"]),
              help="Controls: random pool images, or gaudy versions of them.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(1), help="Images per decision.")
@click.option("--size", "size_px", default=112, show_default=True, type=click.IntRange(4, 2048),
              help="Side (pixels) at which sets and image files are rendered.")
@click.option("--background", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Background grey, 0-1.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("design"), show_default=True,
              help="Folder to write: set.toml, images/, gallery.png, provenance.json.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the strategy and the controls.")
def design_command(model_path: Path, pool_path: Path, n: int, strategy: str, params_texts: tuple[str, ...],
                   control_fraction: float, control: str, batch: int, size_px: int, background: float,
                   out: Path, seed: int) -> None:
    """Let a strategy choose -n images of the --pool with the --model, mix in controls, and write them
    as the next session's stimulus set (with a gallery and a provenance file)."""
    from closedloop.design import GALLERY, PROVENANCE, SET_FILE, parse_params, run_design

    result, rendered = run_design(model_path, pool_path, n, strategy, parse_params(params_texts), out,
                                  control_fraction, control, batch, seed, size_px, background)
    chosen = sum(s.role == "chosen" for s in result.stimuli)
    click.echo(f"{len(rendered)} stimuli ({chosen} chosen by {strategy}, {len(rendered) - chosen} {control} "
               f"controls): set {out / SET_FILE}, gallery {out / GALLERY}, provenance {out / PROVENANCE}")


# ------------------------------------------------------------------ report --
# (owned by the report helper: `closedloop report`)
@main.command("report")
@click.argument("sessions", metavar="SESSION...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="HTML file to write.  [default: report.html in the first SESSION]")
def report_command(sessions: tuple[Path, ...], out: Path | None) -> None:
    """Write one self-contained HTML report of SESSION (several: accuracy curves overlaid).

    Summary, raster and PSTH per unit, the response matrix, model accuracy, the chosen images,
    hypothesis posteriors and timing; a partial session (killed before its summary) is reported
    as far as it goes.
    """
    from closedloop.report import write_report

    click.echo(f"report written to {write_report(list(sessions), out)}")


from closedloop.sweep.cli import sweep  # noqa: E402 - the sweep commands, registered last

main.add_command(sweep)

from closedloop.distil.cli import teacher  # noqa: E402 - the teacher commands

main.add_command(teacher)
