"""Valid seed files for the fuzz harness, made once with the real code paths.

``python -m closedloop.benchmarks.fuzz_seeds FOLDER`` writes, under FOLDER:

============================  ==================================================================
``session/``                  a complete session: ``closedloop run`` of a tiny protocol on the
                              simulated rig (about 10 s)
``killed/``                   the same protocol killed with SIGKILL part-way (no summary.json)
``session.nwb``               ``closedloop export`` of ``session/``
``session.xdf``               the session's markers and spikes as LabRecorder would write them
``models/``                   a closedloop model file, a published compact model (``.pt`` beside
                              its ``.nums_filters.npy``), a TorchScript file, an ONNX file and the
                              session's learner checkpoint
``pool.npz``                  a pool of 8 small images for ``inspect`` and ``design``
``protocol.toml``, ``rig.toml``  the tiny protocol and its rig
============================  ==================================================================

It runs as its own process so that the fuzzing parent never runs torch (a forked child of a
process that has started torch's threads can hang).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from closedloop.simulate.generate import protocol_text, rig_text

FILTERS = (3, 3, 2, 2, 2)  # a small compact model
TINY = {"protocol": {"name": "fuzz", "on_frames": 2, "off_frames": 1}, "stimulus": {"size_deg": 1.6},
        "pool": {"families": {"contour": 10, "dot": 10, "grating": 10, "texture": 10}},
        "model": {"members": 3, "input_px": 16, "channels": [4, 4, 4, 4, 4], "steps_per_update": 5,
                  "refresh_every": 8, "checkpoint_every": 8},
        "selection": {"strategy": "disagreement", "warmup": 8, "no_repeat": 4}, "heldout": {"images": 6}}
"""The seed sessions' protocol: the short protocol shrunk to a 40-image pool and a tiny learner."""
SEEDS = ("session", "killed", "session.nwb", "session.xdf", "models", "pool.npz")


def _closedloop(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "closedloop", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, **kwargs)


def _session(folder: Path, name: str, presentations: int, kill_after: int | None) -> None:
    """Run the tiny protocol into ``folder/name``; with ``kill_after``, SIGKILL the run (and its
    simulator) once that many markers are on disk."""
    work = folder / f"{name}-run"
    work.mkdir()
    (work / "protocol.toml").write_text(protocol_text(presentations, **TINY))
    (work / "rig.toml").write_text(rig_text(f"fuzz-{uuid.uuid4().hex[:8]}", neurons=2, calibration_images=32))
    run = _closedloop("run", str(work / "protocol.toml"), "--rig", str(work / "rig.toml"), "--out", str(work))
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        markers = list(work.glob("*/markers.jsonl"))
        if kill_after is not None and markers and markers[0].read_bytes().count(b"\n") >= kill_after:
            os.killpg(run.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    else:
        if run.returncode != 0:
            raise RuntimeError(f"seed session {name}: closedloop run failed: {run.stderr.read().decode()[-2000:]}")
    run.wait()
    (session,) = [p for p in work.iterdir() if p.is_dir()]
    session.rename(folder / name)
    for file in ("protocol.toml", "rig.toml"):
        shutil.copy(work / file, folder / file)
    shutil.rmtree(work)


def _models(folder: Path, session: Path) -> None:
    import torch

    from closedloop.model.compact import CompactModel
    from closedloop.model.export import export_onnx
    from closedloop.model.generate import randomise_batchnorm
    from closedloop.model.models import save_model

    torch.manual_seed(0)
    model = randomise_batchnorm(CompactModel(FILTERS), seed=1)
    folder.mkdir()
    save_model(model, folder / "closedloop-model.pt", name="fuzz")
    torch.save({k: v.double() for k, v in model.state_dict().items()}, folder / "compact_model_fuzz_neuron0.pt")
    np.save(folder / "compact_model_fuzz_neuron0.nums_filters.npy", np.array(FILTERS, dtype=np.int64))
    torch.jit.trace(model, torch.rand(1, 112, 112, 3) * 255).save(str(folder / "torchscript.pt"))
    export_onnx(model, folder / "model.onnx")
    shutil.copy(session / "checkpoints" / "learner-final.pt", folder / "learner-final.pt")


def _varlen(n: int) -> bytes:
    """An XDF variable-length integer."""
    for width, fmt in ((1, "<B"), (4, "<I"), (8, "<Q")):
        if n < 1 << (8 * width):
            return bytes([width]) + struct.pack(fmt, n)
    raise ValueError(n)


def _chunk(tag: int, content: bytes, stream: int | None = None) -> bytes:
    body = struct.pack("<H", tag) + (b"" if stream is None else struct.pack("<I", stream)) + content
    return _varlen(len(body)) + body


def write_xdf(session: Path, path: Path, header: dict | None = None, marker: str | None = None,
              stamp: float | None = None) -> None:
    """The session's markers (JSON strings) and spikes (int32 channel, unit) as an XDF 1.0 file
    (https://github.com/sccn/xdf/wiki/Specifications), both on the stimulus PC's clock.

    For the fuzz corpora: ``header`` replaces stream header fields (``{(stream, field): value}``,
    streams 1 markers and 2 spikes), ``marker`` every marker's text, ``stamp`` every time stamp (s).
    """
    from closedloop.present.markers import offset_marker, onset_marker
    from closedloop.record import read_session

    record = read_session(session)
    markers = sorted([(m["onset"], onset_marker(m["index"], m["stimulus"])) for m in record.markers]
                     + [(m["offset"], offset_marker(m["index"])) for m in record.markers])
    data = bytearray(b"XDF:") + _chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')
    for stream, name, type_, channels, fmt in ((1, "closedloop-markers", "Markers", 1, "string"),
                                               (2, "closedloop-spikes", "Spikes", 2, "int32")):
        fields = {"name": name, "type": type_, "channel_count": channels, "nominal_srate": 0, "channel_format": fmt}
        fields.update({f: v for (s, f), v in (header or {}).items() if s == stream})
        xml = ('<?xml version="1.0"?><info>' + "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
               + f"<source_id>{name}-1</source_id><created_at>1.0</created_at></info>")
        data += _chunk(2, xml.encode(), stream)
    samples = bytearray(_varlen(len(markers)))
    for t, text in markers:
        text = text if marker is None else marker
        samples += b"\x08" + struct.pack("<d", t if stamp is None else stamp) + _varlen(len(text.encode())) + text.encode()
    data += _chunk(3, bytes(samples), 1)
    samples = bytearray(_varlen(len(record.spikes)))
    for spike in record.spikes:
        t = spike["time"] if stamp is None else stamp
        samples += b"\x08" + struct.pack("<d", t) + struct.pack("<ii", spike["channel"], spike["unit"])
    data += _chunk(3, bytes(samples), 2)
    for stream, times in ((1, [t for t, _ in markers]), (2, list(record.spikes["time"]))):
        data += _chunk(4, struct.pack("<dd", times[-1], 0.0), stream)
        xml = (f'<?xml version="1.0"?><info><first_timestamp>{times[0]!r}</first_timestamp><last_timestamp>'
               f"{times[-1]!r}</last_timestamp><sample_count>{len(times)}</sample_count></info>")
        data += _chunk(6, xml.encode(), stream)
    path.write_bytes(bytes(data))


def build_seeds(folder: Path) -> None:
    """Write every seed into ``folder`` (created), unless all are there already."""
    folder.mkdir(parents=True, exist_ok=True)
    if all((folder / name).exists() for name in SEEDS):
        return
    for name in (*SEEDS, "protocol.toml", "rig.toml"):
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    _session(folder, "session", 24, None)
    _session(folder, "killed", 400, kill_after=10)
    export = _closedloop("export", str(folder / "session"), "--nwb", str(folder / "session.nwb"))
    if export.wait() != 0:
        raise RuntimeError(f"seed NWB: closedloop export failed: {export.stderr.read().decode()[-2000:]}")
    write_xdf(folder / "session", folder / "session.xdf")
    _models(folder / "models", folder / "session")
    from closedloop.stimuli.sets import generate_pool

    generate_pool({"contour": 2, "dot": 2, "grating": 2, "texture": 2}, 32, seed=0).save(folder / "pool.npz")


if __name__ == "__main__":
    build_seeds(Path(sys.argv[1]))
