"""``closedloop teacher``: train a large model on recorded sessions and distil it into compact students."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console


def _ints(text: str, option: str, count: int | None = None, least: int = 1) -> tuple[int, ...]:
    """``"64,128,256,512"`` -> ints of at least ``least`` (``count`` of them, if given); a
    BadParameter naming ``option`` otherwise."""
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if not values or (count is not None and len(values) != count) or min(values) < least:
        many = "" if count is None else f"{count} "
        raise click.BadParameter(f"expected {many}comma-separated integers of at least {least}, got {text!r}",
                                 param_hint=option)
    return values


def _say(line: str) -> None:
    """A progress line, on stderr (the tables go to stdout)."""
    Console(stderr=True).print(line, markup=False, highlight=False, soft_wrap=True)


@click.group("teacher")
def teacher() -> None:
    """A large V4 model trained on recorded sessions, and compact students distilled from it."""


@teacher.command("train")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Folder of sessions: images_<name>.zip, responses_repeat_averaged_<name>.npy, optionally "
                   "responses_raw_<name>.npy (in it or its sessions/), e.g. ../shared/v4.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Teacher file to write; OUT.checkpoint holds the run until it finishes.")
@click.option("--session", "names", multiple=True, help="Only this session (repeatable; default: all).")
@click.option("--widths", default="64,128,256,512", show_default=True, help="Channels of the four stages.")
@click.option("--blocks", default="2,2,2,2", show_default=True, help="Residual blocks per stage.")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1), help="Passes over the images.")
@click.option("--batch", default=32, show_default=True, type=click.IntRange(2), help="Images per minibatch.")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(0, min_open=True),
              help="AdamW's peak step size.")
@click.option("--heldout", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of each session's images held out.")
@click.option("--shift", default=4, show_default=True, type=click.IntRange(0, 16), help="Largest image shift, px.")
@click.option("--published", default=None, type=click.Path(path_type=Path),
              help="Published compact models to compare with.  [default: DATA/compact_models]")
@click.option("--threads", default=None, type=click.IntRange(1), help="Torch threads (default: every core).")
@click.option("--fresh", is_flag=True, help="Start over: ignore an existing checkpoint or teacher file.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the weights, splits and minibatches.")
def train(data: Path, out: Path, names: tuple[str, ...], widths: str, blocks: str, epochs: int, batch: int,
          lr: float, heldout: float, shift: int, published: Path | None, threads: int | None, fresh: bool,
          seed: int) -> None:
    """Train a teacher (a residual network, one readout per neuron) on every session in --data.

    Checkpoints after every epoch; the same command again resumes where it stopped. Prints the
    held-out accuracy per session, beside the published compact models' on the same images.
    """
    import torch

    from closedloop.model.teacher_training import TeacherSettings, train_teacher

    settings = TeacherSettings(widths=_ints(widths, "--widths", 4), blocks=_ints(blocks, "--blocks", 4),
                               epochs=epochs, batch=batch, lr=lr, heldout=heldout, shift=shift, seed=seed)
    if threads is not None:
        torch.set_num_threads(threads)
    metadata = train_teacher(data, out, settings, list(names) or None, published, fresh, _say)
    click.echo(teacher_table(metadata))


def teacher_table(metadata: dict) -> str:
    """Held-out accuracy per session: mean r of the teacher and of the published models."""
    rows = [("session", "neurons", "held out", "teacher r", "published r", "noise-corr. R2")]
    for s in metadata["sessions"]:
        rows.append((s["name"], str(s["neurons"]), str(len(s["heldout"])), _fmt(s["heldout_r"]),
                     _fmt(s["published_r"]), _fmt(s["noise_corrected_r2"])))
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


@teacher.command("distil")
@click.option("--teacher", "teacher_path", required=True, type=click.Path(path_type=Path),
              help="A teacher file written by `closedloop teacher train`.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="The sessions it was trained on.")
@click.option("--session", required=True, help="The session whose neurons get students (e.g. 190923).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder: students/ (published-format files), students.json, the task journal.")
@click.option("--neurons", default=None, help="Only these neurons of the session, e.g. 0,3,7 (default: all).")
@click.option("--budget", default=12_500, show_default=True, type=click.IntRange(1),
              help="Most parameters a student keeps.")
@click.option("--filters", default=48, show_default=True, type=click.IntRange(1),
              help="Filters per layer of the shared student, before pruning.")
@click.option("--images-n", default=24_000, show_default=True, type=click.IntRange(1),
              help="Training images after augmentation.")
@click.option("--gaudy", default=1000, show_default=True, type=click.IntRange(0),
              help="Gaudy versions of training images in the pool.")
@click.option("--synthesized", default=2, show_default=True, type=click.IntRange(0),
              help="Images synthesised for the teacher per neuron.")
@click.option("--shared-steps", default=1500, show_default=True, type=click.IntRange(0),
              help="Minibatches (of 32 images) of the shared student.")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(0),
              help="Minibatches (of 16 images) fine-tuning each neuron's student before pruning.")
@click.option("--final-steps", default=200, show_default=True, type=click.IntRange(0),
              help="Minibatches of each student's final retraining.")
@click.option("--published", default=None, type=click.Path(path_type=Path),
              help="Published compact models to compare with.  [default: DATA/compact_models]")
@click.option("--address", default=None, help="A Ray cluster to run on (auto, HOST:6379, ray://HOST:10001).")
@click.option("--workers", default=None, type=click.IntRange(1), help="Most students trained at once.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the pool and the students.")
def distil_command(teacher_path: Path, data: Path, session: str, out: Path, neurons: str | None, budget: int,
                   filters: int, images_n: int, gaudy: int, synthesized: int, shared_steps: int, steps: int,
                   final_steps: int, published: Path | None, address: str | None, workers: int | None,
                   seed: int) -> None:
    """Distil and prune a compact student (at most --budget parameters) for every neuron of --session.

    One Ray task per neuron on every core; a rerun skips the finished neurons. Prints per neuron
    the parameters, R2 against the teacher on held-out images, r against the recorded responses
    (student, teacher) and the published compact model's r, then the time per stage.
    """
    from closedloop.model.compress import CompressConfig
    from closedloop.distil.students import DistilSettings, _student_config, distil_session

    chosen = None if neurons is None else list(_ints(neurons, "--neurons", least=0))
    student = CompressConfig(**{**_student_config().__dict__, "budget": budget, "filters": filters,
                                "images_n": images_n, "steps": steps, "final_steps": final_steps, "seed": seed})
    settings = DistilSettings(student=student, gaudy=gaudy, synthesized=synthesized, shared_steps=shared_steps)
    report = distil_session(teacher_path, data, session, out, settings, address, workers, chosen, published, _say)
    click.echo(students_table(report))


def students_table(report: dict) -> str:
    """Per neuron: parameters, R2 and r against the teacher, r against recorded responses; a summary."""
    rows = [("neuron", "params", "R2 vs teacher", "(unpruned)", "r recorded", "(unpruned)", "teacher r",
             "published r")]
    for n in report["neurons"]:
        if n["status"] != "done":
            rows.append((n["name"], "failed", n["error"] or "", "", "", "", "", ""))
            continue
        rows.append((n["name"], f"{n['parameters']:,}", _fmt(n["r2_teacher"]), _fmt(n["r2_teacher_unpruned"]),
                     _fmt(n["r_recorded"]), _fmt(n["r_recorded_unpruned"]), _fmt(n["teacher_r_recorded"]),
                     _fmt(n["published_r"])))
    s = report["summary"]
    rows.append(("median", "-" if s["parameters"] is None else f"{s['parameters']:,.0f}", _fmt(s["r2_teacher"]),
                 _fmt(s["r2_teacher_unpruned"]), _fmt(s["r_recorded"]), _fmt(s["r_recorded_unpruned"]),
                 _fmt(s["teacher_r_recorded"]), _fmt(s["published_r"])))
    table = _table(rows)
    ratio = "-" if s["ratio"] is None else f"{s['ratio']:,.0f}x"
    return (f"{table}\n{s['students']} students ({s['failed']} failed), at most {s['largest']} parameters; "
            f"{s['at_least_90']} with R2 >= 0.9 against the teacher; compression {ratio} against the teacher's "
            f"{report['teacher_parameters']:,} parameters")
