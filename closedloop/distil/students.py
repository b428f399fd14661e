"""``closedloop teacher distil``: a compact student per neuron of a session, distilled from a teacher.

The paper's pipeline (Cowley et al. 2026) on closedloop's teacher
(:mod:`closedloop.model.teacher_training`), in six timed stages:

1. **data**: the sessions the teacher was trained on, checked against its record of them (same
   images and counts), with each session's held-out images as the teacher recorded them;
2. **pool**: the images students learn from, none of them held out or made from a held-out
   image: every session's training images (natural images), ``gaudy`` gaudy versions of them
   (:func:`closedloop.stimuli.families.gaudy`), ``synthesized`` images per neuron synthesised for
   the teacher (pixel ascent on that neuron's output, :func:`closedloop.select.synthesis.ascend`,
   from a random training image), then augmented (:func:`closedloop.model.compress.augment`) up to
   ``images_n`` images;
3. **teacher**: the teacher's responses to the pool and to the session's held-out images, every
   neuron of the session in one pass;
4. **shared student** (:func:`shared_student`): one compact model of the published architecture
   with a readout per neuron, distilled on every neuron at once, on every core. Learning image
   features is what costs most, and it is done once per session instead of once per neuron
   (the paper distils each neuron from scratch; on a CPU that is hours per session);
5. **students**: one Ray task per neuron (:func:`closedloop.sweep.runner.run_sweep`: every core,
   or a cluster; a journal, so a rerun skips finished neurons and retries failed ones): the
   shared student cut to that neuron's readout (:func:`cut_student`), fine-tuned on that neuron,
   pruned filter by filter to at most ``budget`` parameters and retrained
   (:func:`closedloop.model.compress.distil`);
6. **files**: ``OUT/students/compact_model_<session>_neuron<n>.pt`` with its
   ``.nums_filters.npy``, the published models' own format, so everything that reads published
   models reads students too (``load_model``, ``inspect``, a ``compact`` core, simulated twins), and
   ``OUT/students.json``: per neuron the parameters, R^2 and r against the teacher on the held-out
   images, r against the recorded responses (the student's, the unpruned student's, the teacher's)
   and the published compact model's r on the same images when the folder has it.

Every student answers in the teacher's units: predicted spike counts in the response window.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from closedloop.errors import ClosedLoopError
from closedloop.model.compact import CompactModel
from closedloop.model.compress import CompressConfig, accuracy, augment, distil
from closedloop.model.recorded import find_sessions

STUDENTS, REPORT = "students", "students.json"
BUDGET = 12_500
"""Most parameters a student keeps by default (the paper's compact models: about 5,000-25,000)."""


def _student_config() -> CompressConfig:
    return CompressConfig(filters=48, images_n=24_000, steps=100, prune_steps=30, final_steps=200, batch=16,
                          lr=2e-3, budget=BUDGET)


@dataclass(frozen=True)
class DistilSettings:
    """How :func:`distil_session` builds the pool and the students.

    Attributes
    ----------
    student : CompressConfig
        Distillation and pruning (its ``images_n`` is the pool's size after augmentation, its
        ``budget`` the parameter budget; ``output`` and ``heldout`` are not used).
    gaudy : int
        Gaudy versions of training images in the pool.
    synthesized : int
        Images synthesised for the teacher per neuron of the session.
    synthesis_steps : int
        Adam steps of each synthesis.
    shared_steps, shared_batch : int
        Minibatches (of ``shared_batch`` images) of the shared student every neuron's student
        starts from (:func:`shared_student`); ``student.steps`` then fine-tune each neuron's copy
        before it is pruned.
    """

    student: CompressConfig = field(default_factory=_student_config)
    gaudy: int = 1000
    synthesized: int = 2
    synthesis_steps: int = 40
    shared_steps: int = 1500
    shared_batch: int = 32

    def __post_init__(self) -> None:
        bad = [n for n, ok in (("gaudy", self.gaudy >= 0), ("synthesized", self.synthesized >= 0),
                               ("synthesis_steps", self.synthesis_steps >= 1), ("shared_steps", self.shared_steps >= 0),
                               ("shared_batch", self.shared_batch >= 2)) if not ok]
        if bad:
            raise ClosedLoopError("distil settings: invalid " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad))

    def as_dict(self) -> dict:
        return asdict(self)


def read_teacher(path: Path | str):
    """A teacher file (:func:`closedloop.model.models.load_model`) and its record of the sessions."""
    from closedloop.model.models import load_model

    teacher = load_model(path)
    metadata = dict(teacher.metadata)
    if not isinstance(metadata.get("sessions"), list) or not isinstance(metadata.get("data"), list):
        raise ClosedLoopError(f"{path}: not a teacher trained by `closedloop teacher train` (no record of its "
                              "sessions and held-out images)")
    return teacher, metadata


def _file_digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def pool_for(sessions, metadata: dict, settings: DistilSettings, teacher, outputs: list[int],
             log: Callable[[str], None]) -> np.ndarray:
    """The students' training images (stage 2): natural, gaudy, synthesised, augmented; uint8."""
    from closedloop.stimuli.families import gaudy

    held = {s["name"]: np.asarray(s["heldout"], int) for s in metadata["sessions"]}
    natural = np.concatenate([np.delete(s.images, held[s.name], axis=0) for s in sessions])
    rng = np.random.default_rng(settings.student.seed)
    parts = [natural]
    if settings.gaudy:
        chosen = rng.choice(len(natural), min(settings.gaudy, len(natural)), replace=False)
        parts.append(np.stack([gaudy(natural[i]) for i in np.sort(chosen)]))
    if settings.synthesized:
        parts.append(synthesize_for(teacher, outputs, natural, settings.synthesized, settings.synthesis_steps, rng))
    pool = np.concatenate(parts)
    extra = max(0, settings.student.images_n - len(pool))
    log(f"pool: {len(natural)} natural, {len(parts[1]) if settings.gaudy else 0} gaudy, "
        f"{len(parts[-1]) if settings.synthesized else 0} synthesised for the teacher, {extra} augmented")
    return np.concatenate([pool, augment(pool, extra, rng)]) if extra else pool


def synthesize_for(teacher, outputs: list[int], starts: np.ndarray, per: int, steps: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``per`` images per teacher output in ``outputs``, each raised by pixel ascent on that output
    from a random image of ``starts``; (len(outputs) * per, N, N, 3) uint8."""
    from closedloop.select.synthesis import ascend

    module = teacher.torch_module()
    if module is None:
        raise ClosedLoopError(f"{teacher.name}: images cannot be synthesised for a teacher without gradients")
    targets = np.repeat(np.asarray(outputs, int), per)
    generator = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    out = []
    for start in range(0, len(targets), 16):
        which = torch.as_tensor(targets[start:start + 16])
        first = torch.from_numpy(starts[rng.integers(len(starts), size=len(which))]).float()

        def objective(pixels: torch.Tensor, which=which) -> torch.Tensor:
            return module(pixels).reshape(len(pixels), -1).gather(1, which[:, None])[:, 0]

        pixels, _ = ascend(objective, first, steps, generator, max_change=64.0)
        out.append(pixels.round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


def shared_student(pool: np.ndarray, targets: np.ndarray, settings: DistilSettings,
                   log: Callable[[str], None]) -> CompactModel:
    """One compact model of ``settings.student.filters`` filters with a dense readout per neuron,
    distilled on every neuron's z-scored targets (K, neurons) at once (stage 4): the start of every
    neuron's student, so the expensive learning of image features is done once per session."""
    from closedloop.model.compress import new_student, recalibrate_batchnorm, train

    config = settings.student
    model = new_student(config.filters, config.seed)
    with torch.no_grad():
        model.layers["Beta"] = torch.nn.Linear(model.layers["Beta"].in_features, targets.shape[1])
    z = (targets - targets.mean(0)) / np.where(targets.std(0) > 0, targets.std(0), 1.0)
    rng = np.random.default_rng([config.seed, 1])
    train(model, pool, z, settings.shared_steps, settings.shared_batch, config.lr, rng, log, "shared student")
    recalibrate_batchnorm(model, pool[np.sort(rng.permutation(len(pool))[:config.calibration_images])],
                          settings.shared_batch)
    return model


def cut_student(shared: CompactModel, column: int) -> CompactModel:
    """Neuron ``column``'s student from a shared student: its layers and that neuron's readout."""
    student = CompactModel(shared.nums_filters)
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith("layers.Beta.")}
    beta = shared.layers["Beta"]
    state["layers.Beta.weight"] = beta.weight.detach()[column:column + 1].clone()
    state["layers.Beta.bias"] = beta.bias.detach()[column:column + 1].clone()
    student.load_state_dict(state)
    return student.eval()


def student_cell(shared: dict, inputs: dict) -> dict:
    """One neuron's student (a Ray task of :func:`distil_session`): its figures and its two files."""
    n = inputs["column"]
    config = CompressConfig(**{**inputs["settings"]["student"], "seed": inputs["settings"]["student"]["seed"] + n})
    start = CompactModel(shared["start"]["nums_filters"])
    start.layers["Beta"] = torch.nn.Linear(start.layers["Beta"].in_features, shared["targets"].shape[1])
    start.load_state_dict(shared["start"]["state"])
    result = distil(shared["pool"], shared["targets"][:, n], shared["held"], shared["held_targets"][:, n], config,
                    where=f"teacher output {inputs['output']}", start=cut_student(start, n))
    recorded = shared["recorded"][:, n]
    r_recorded = accuracy(result.heldout_after, recorded)[0]
    r_unpruned = accuracy(result.heldout_before, recorded)[0]
    state = io.BytesIO()
    torch.save(result.student.state_dict(), state)
    nums = io.BytesIO()
    np.save(nums, np.asarray(result.student.nums_filters, np.int64))
    stem = f"compact_model_{inputs['session']}_neuron{inputs['neuron']}"
    return {"parameters": result.parameters_after, "parameters_unpruned": result.parameters_before,
            "filters": list(result.student.nums_filters), "r2_teacher": result.r2_after, "r_teacher": result.r_after,
            "r2_teacher_unpruned": result.r2_before, "r_teacher_unpruned": result.r_before,
            "r_recorded": r_recorded, "r_recorded_unpruned": r_unpruned,
            "pruned_vs_unpruned_r": accuracy(result.heldout_after, result.heldout_before)[0],
            "_files": {f"{stem}.pt": state.getvalue(), f"{stem}.nums_filters.npy": nums.getvalue()}}


def distil_session(teacher_path: Path | str, data: Path | str, session: str, out: Path | str,
                   settings: DistilSettings | None = None, address: str | None = None, workers: int | None = None,
                   neurons: list[int] | None = None, published: Path | str | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Distil and prune a student for every neuron of ``session`` (module docstring); returns the report.

    Parameters
    ----------
    teacher_path : Path
        A teacher file written by ``closedloop teacher train``.
    data : Path
        The folder of sessions it was trained on.
    session : str
        The session whose neurons get students.
    out : Path
        Output folder: ``students/``, ``students.json``, and the task journal (``results.jsonl``).
    settings : DistilSettings, optional
        Pool and student settings.
    address, workers : optional
        Ray: a cluster to join (default a local Ray on this machine's cores) and the most tasks at once.
    neurons : list of int, optional
        Only these neurons of the session (default all).
    published : Path, optional
        Published compact models to compare with (default ``data/compact_models``).
    log : callable
        Progress lines.
    """
    from closedloop.model.recorded import correlations
    from closedloop.model.teacher_training import fingerprint, published_r
    from closedloop.record.atomic import write_atomic
    from closedloop.sweep.runner import Plan, run_sweep

    settings = settings or DistilSettings()
    out = Path(out)
    stages: dict[str, float] = {}
    clock = time.perf_counter()
    teacher, metadata = read_teacher(teacher_path)
    records = {s["name"]: s for s in metadata["sessions"]}
    if session not in records:
        raise ClosedLoopError(f"{teacher_path}: the teacher has no session {session!r} (it has "
                              f"{', '.join(records)})")
    sessions = find_sessions(data, [d["name"] for d in metadata["data"]])
    if fingerprint(sessions) != metadata["data"]:
        raise ClosedLoopError(f"{data}: these sessions are not the data {teacher_path} was trained on (their "
                              "images or counts differ)")
    record = records[session]
    target = next(s for s in sessions if s.name == session)
    chosen = list(range(target.neurons)) if neurons is None else sorted(set(neurons))
    if not chosen or any(not 0 <= n < target.neurons for n in chosen):
        raise ClosedLoopError(f"session {session} has neurons 0-{target.neurons - 1}, not {chosen}")
    outputs = [record["first_output"] + n for n in chosen]
    held_index = np.asarray(record["heldout"], int)
    held, recorded = target.images[held_index], target.responses[chosen][:, held_index].T
    stages["data"] = time.perf_counter() - clock
    log(f"data: {len(sessions)} sessions; session {session}: {len(chosen)} neurons, {len(held)} held-out images "
        f"[{stages['data']:.0f} s]")

    clock = time.perf_counter()
    pool = pool_for(sessions, metadata, settings, teacher, outputs, log)
    stages["pool"] = time.perf_counter() - clock
    log(f"pool: {len(pool)} images [{stages['pool']:.0f} s]")

    clock = time.perf_counter()
    targets = teacher.predict(pool, batch_size=64)[:, outputs]
    held_targets = teacher.predict(held, batch_size=64)[:, outputs]
    stages["teacher"] = time.perf_counter() - clock
    log(f"teacher: responses to {len(pool) + len(held)} images [{stages['teacher']:.0f} s]")

    clock = time.perf_counter()
    start = shared_student(pool, targets, settings, log)
    stages["shared student"] = time.perf_counter() - clock
    log(f"shared student: {settings.student.filters} filters, {len(chosen)} readouts, {settings.shared_steps} "
        f"minibatches [{stages['shared student']:.0f} s]")

    clock = time.perf_counter()
    teacher_r = correlations(held_targets, recorded)
    folder = Path(published) if published is not None else Path(data) / "compact_models"
    theirs = published_r(folder, session, held, target.responses[:, held_index].T)
    digest = _file_digest(Path(teacher_path))
    plan = Plan(kind="students", run=student_cell,
                cells=[{"teacher": digest, "session": session, "neuron": n, "output": o, "column": i,
                        "settings": settings.as_dict()} for i, (n, o) in enumerate(zip(chosen, outputs))],
                shared={"": {"pool": pool, "targets": targets, "held": held, "held_targets": held_targets,
                             "recorded": recorded, "start": {"nums_filters": list(start.nums_filters),
                                                             "state": start.state_dict()}}},
                describe=lambda inputs: f"neuron {inputs['neuron']}")
    outcome = run_sweep(plan, out, address, workers)
    stages["students"] = time.perf_counter() - clock

    clock = time.perf_counter()
    folder_out = out / STUDENTS
    folder_out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, r in enumerate(outcome.records):
        n = r["inputs"]["neuron"]
        row = {"neuron": n, "name": f"{session}_n{n}", "output": r["inputs"]["output"], "status": r["status"],
               "error": r["error"], "teacher_r_recorded": float(teacher_r[chosen.index(n)]),
               "published_r": None if theirs is None else float(theirs[n])}
        if r["status"] == "done":
            row.update(r["outputs"])
            for name in r["files"]:
                source = out / name
                write_atomic(folder_out / source.name, source.read_bytes())
        rows.append(row)
    teacher_parameters = int(metadata.get("parameters") or 0)
    report = {"teacher": str(teacher_path), "teacher_sha1": digest, "teacher_parameters": teacher_parameters,
              "session": session, "data": str(data), "heldout_images": len(held), "pool_images": len(pool),
              "settings": settings.as_dict(), "ray": outcome.ray, "neurons": rows,
              "summary": summarise(rows, teacher_parameters)}
    write_atomic(out / REPORT, json.dumps(report, indent=1) + "\n")
    stages["files"] = time.perf_counter() - clock
    report["stages"] = {k: round(v, 1) for k, v in stages.items()}
    write_atomic(out / REPORT, json.dumps(report, indent=1) + "\n")
    log("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))
    return report


def summarise(rows: list[dict], teacher_parameters: int) -> dict:
    """Medians over the finished students and the compression ratio against the teacher."""
    done = [r for r in rows if r["status"] == "done"]

    def median(key: str) -> float | None:
        values = [r[key] for r in done if r.get(key) is not None and np.isfinite(r[key])]
        return float(np.median(values)) if values else None

    parameters = median("parameters")
    share = [r["r_recorded"] ** 2 / r["teacher_r_recorded"] ** 2 for r in done
             if r.get("teacher_r_recorded") and np.isfinite(r["teacher_r_recorded"]) and r["teacher_r_recorded"] > 0]
    return {"students": len(done), "failed": len(rows) - len(done), "parameters": parameters,
            "largest": max((r["parameters"] for r in done), default=None),
            "r2_teacher": median("r2_teacher"), "r2_teacher_unpruned": median("r2_teacher_unpruned"),
            "r_recorded": median("r_recorded"), "r_recorded_unpruned": median("r_recorded_unpruned"),
            "teacher_r_recorded": median("teacher_r_recorded"), "published_r": median("published_r"),
            "explained_share": float(np.median(share)) if share else None,
            "at_least_90": sum(r["r2_teacher"] >= 0.9 for r in done),
            "ratio": teacher_parameters / parameters if parameters and teacher_parameters else None}
