"""One compliance suite run against every reader of a user's file (recordings, stimulus logs, model
and core files, response arrays): neo-style, each reader declares how a valid file is made and read,
and every kind of garbage must give a one-line :class:`ClosedLoopError` naming the file -- never a
traceback, a MemoryError or a hang.

Valid files are written with the real writers (neo's NixIO and NWBIO, an XDF file built to the
specification in ``tests/replay/test_readers.py``, torch, ONNX export, closedloop's own savers).
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from closedloop.config import CoreSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn.build import describe
from closedloop.model.recorded import read_session as read_build_session
from closedloop.learn.cores import _network_core, read_core, save_core
from closedloop.model.compact import CompactModel, load_published
from closedloop.model.export import export_onnx
from closedloop.model.generate import randomise_batchnorm
from closedloop.model.models import OnnxModel, load_model, save_model, save_torchscript
from closedloop.replay.convert import read_v4
from closedloop.replay.readers import read_stimulus_log
from closedloop.replay.sources import open_recording
from tests.replay.test_readers import (XdfFile, make_truth, marker_stream, neo_block, varlen, write_csv_log,
                                       write_jsonl_log, write_nix, write_nwb, write_xdf)

FILTERS = (2, 3, 2, 2, 2)  # a tiny compact model: fast to save, export and load


def _compact(seed: int = 0) -> CompactModel:
    torch.manual_seed(seed)
    return randomise_batchnorm(CompactModel(FILTERS), seed)


# ------------------------------------------------------------- valid files --
def _xdf(d: Path) -> Path:
    return write_xdf(d / "rec.xdf", make_truth(edges=False))


def _xdfz(d: Path) -> Path:
    path = d / "rec.xdfz"
    path.write_bytes(gzip.compress(_xdf(d).read_bytes()))
    return path


def _published(d: Path) -> Path:
    path = d / "compact_model_1_neuron1.pt"
    torch.save({k: v.double() for k, v in _compact().state_dict().items()}, path)
    np.save(d / "compact_model_1_neuron1.nums_filters.npy", np.array(FILTERS))
    return path


def _own_model(d: Path) -> Path:
    path = d / "model.pt"
    save_model(_compact(), path)
    return path


def _onnx(d: Path) -> Path:
    return export_onnx(_compact(), d / "model.onnx", check=False)


def _torchscript(d: Path) -> Path:
    return save_torchscript(_compact(), d / "script.pt")


def _core(d: Path) -> Path:
    path = d / "core.pt"
    save_core(_compact(), 56, path, {"summary": "test core"})
    return path


def _counts(d: Path) -> Path:
    path = d / "responses.npy"
    np.save(path, np.arange(12.0).reshape(3, 4))
    return path


def _raw_counts(d: Path) -> Path:
    path = d / "sessions" / "responses_raw_1.npy"
    path.parent.mkdir()
    np.save(path, np.ones((2, 3, 4)))
    return path


@dataclass
class Reader:
    """How one reader is fed: a valid file, how it is read, and which garbage applies."""

    valid: Callable[[Path], Path]
    read: Callable[[Path], object]
    other: str  # the reader whose valid file is of another format
    garbage: tuple[str, ...] = ("empty", "random", "truncated", "other")


READERS = {
    "xdf": Reader(_xdf, open_recording, "nix"),
    "xdfz": Reader(_xdfz, open_recording, "xdf"),
    "nwb": Reader(lambda d: write_nwb(d / "rec.nwb", neo_block(make_truth(), "epoch")),
                  lambda p: open_recording(p, events="stimulus"), "xdf"),
    "nix": Reader(lambda d: write_nix(d / "rec.nix", neo_block(make_truth(), "event")),
                  lambda p: open_recording(p, events="stimulus"), "nwb"),
    # Text logs cut at any point may still be valid (a cut last line is ignored, as a killed run leaves it).
    "log-jsonl": Reader(lambda d: write_jsonl_log(d / "markers.jsonl", make_truth()), read_stimulus_log,
                        "log-csv", ("empty", "random", "other")),
    "log-csv": Reader(lambda d: write_csv_log(d / "stimuli.csv", make_truth()), read_stimulus_log, "log-jsonl",
                      ("empty", "random", "other")),
    "model-own": Reader(_own_model, load_model, "core-file"),
    "model-published": Reader(_published, load_model, "model-own"),
    "model-onnx": Reader(_onnx, load_model, "model-own"),
    "model-torchscript": Reader(_torchscript, load_model, "xdf"),
    "onnx-model": Reader(_onnx, OnnxModel, "core-file"),
    "published": Reader(_published, load_published, "model-own"),
    "core-file": Reader(_core, read_core, "model-onnx"),
    "core-describe": Reader(_core, describe, "model-own"),
    "core-network-torch": Reader(_own_model, lambda p: _network_core(
        CoreSpec(kind="network", path=p, layer="module.model.layers.layer2_bn")), "core-file"),
    "core-network-onnx": Reader(_onnx, lambda p: _network_core(CoreSpec(kind="network", path=p,
                                                                        layer="outputs")), "model-own"),
    "build-responses": Reader(_counts, lambda p: read_build_session(p.with_name("images.zip"), p), "core-file"),
    "v4-counts": Reader(_raw_counts, lambda p: read_v4(p.parent.parent, "1"), "build-responses"),
}
READERS["model"] = READERS["model-own"]


def _garbage(kind: str, name: str, tmp_path: Path) -> Path:
    """A file where the reader ``name`` expects its valid file, holding garbage of ``kind``."""
    reader = READERS[name]
    (tmp_path / "good").mkdir()
    good = reader.valid(tmp_path / "good")
    if kind == "other":
        (tmp_path / "other").mkdir()
        content = READERS[reader.other].valid(tmp_path / "other").read_bytes()
    else:
        data = good.read_bytes()
        content = {"empty": b"", "random": np.random.default_rng(3).bytes(4096),
                   "truncated": data[: len(data) * 3 // 5]}[kind]
    good.write_bytes(content)
    return good


def _one_line(info: pytest.ExceptionInfo, path: Path) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


CASES = [(name, kind) for name, reader in READERS.items() if name != "model" for kind in reader.garbage]


@pytest.mark.parametrize("name, kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_garbage_is_refused_in_one_line_naming_the_file(name, kind, tmp_path):
    path = _garbage(kind, name, tmp_path)
    with pytest.raises(ClosedLoopError) as info:
        READERS[name].read(path)
    _one_line(info, path)


@pytest.mark.parametrize("name", [n for n in READERS if n != "model"])
def test_the_valid_file_is_read(name, tmp_path):
    reader = READERS[name]
    if name in ("build-responses", "v4-counts"):
        pytest.skip("needs its images too (tests/learn/test_build.py, tests/replay/test_convert.py)")
    reader.read(reader.valid(tmp_path))


# --------------------------------------------------------- XDF, mutated --
def _xdf_with_markers(path: Path, markers: list[str]) -> Path:
    truth = make_truth(edges=False)
    xdf = XdfFile()
    xdf.header(1, "closedloop-markers", "Markers", 1, "string", 0)
    xdf.header(2, "closedloop-spikes", "Spikes", 2, "int32", 0)
    stamps, _ = marker_stream(truth)
    xdf.samples(1, stamps[: len(markers)], [[m] for m in markers])
    xdf.samples(2, truth.spikes["time"], np.column_stack([truth.spikes["channel"], truth.spikes["unit"]]))
    return xdf.save(path)


@pytest.mark.parametrize("index", ['"abc"', "null", "1.5", "[1]", "1e400"])
def test_xdf_marker_with_a_bad_index_names_the_stream_and_event(index, tmp_path):
    markers = [json.dumps({"event": "onset", "index": 0, "stimulus": "a"}),
               '{"event": "onset", "index": %s, "stimulus": "b"}' % index]
    path = _xdf_with_markers(tmp_path / "bad.xdf", markers)
    with pytest.raises(ClosedLoopError) as info:
        open_recording(path)
    message = _one_line(info, path)
    assert "'closedloop-markers'" in message and "index" in message


def _chunk(tag: int, content: bytes, stream: int, length: int | None = None) -> bytes:
    body = struct.pack("<H", tag) + struct.pack("<I", stream) + content
    return varlen(len(body) if length is None else length) + body


@pytest.mark.parametrize("mutation", ["chunk-length-2^62", "sample-count-2^62", "channel-count-2^40",
                                      "length-width-3", "stamp-cut"])
def test_xdf_lengths_beyond_the_file_are_refused_without_allocating(mutation, tmp_path):
    xdf = XdfFile()
    channels = 2**40 if mutation == "channel-count-2^40" else 2
    xdf.header(1, "closedloop-markers", "Markers", 1, "string", 0)
    xdf.header(2, "closedloop-spikes", "Spikes", channels, "int32", 0)
    data = bytes(xdf.data)
    samples = b"\x01\x08" + struct.pack("<d", 1.0) + struct.pack("<ii", 1, 1)
    if mutation == "chunk-length-2^62":
        data += _chunk(3, samples, 2, length=2**62)
    elif mutation == "sample-count-2^62":
        data += _chunk(3, varlen(2**62) + samples[1:], 2)
    elif mutation == "length-width-3":
        data += b"\x03\x00\x00\x00" + samples
    elif mutation == "stamp-cut":
        data += _chunk(3, b"\x01\x08" + b"\x00\x00", 2)
    else:
        data += _chunk(3, samples, 2)
    path = tmp_path / "mutated.xdf"
    path.write_bytes(data)
    with pytest.raises(ClosedLoopError) as info:
        open_recording(path)
    _one_line(info, path)


# ------------------------------------------------------ model files, wrong shape --
@pytest.mark.parametrize("header", [
    {"format": "closedloop-model", "version": 1, "kind": "compact", "args": {"nums_filters": "abc"},
     "state_dict": {}},
    {"format": "closedloop-model", "version": 1, "kind": "compact", "args": {"nums_filters": [2, 3]},
     "state_dict": {}},
    {"format": "closedloop-model", "version": 1, "kind": "compact", "args": {"nums_filters": list(FILTERS)},
     "state_dict": {"layers.Beta.weight": "x"}},
    {"format": "closedloop-model", "version": 1, "kind": "compact", "args": [], "state_dict": []},
    {"format": "closedloop-model"},
    {"weights": [1, 2, 3]},
    [1, 2, 3],
    torch.zeros(3),
])
def test_torch_file_of_the_wrong_shape_is_refused(header, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save(header, path)
    for read in (load_model, read_core, describe):
        with pytest.raises(ClosedLoopError) as info:
            read(path)
        _one_line(info, path)


@pytest.mark.parametrize("header", [
    {"format": "closedloop-core", "version": 1, "nums_filters": ["a", 1, 1, 1, 1], "input_px": 56, "state_dict": {}},
    {"format": "closedloop-core", "version": 1, "nums_filters": [0, 1, 1, 1, 1], "input_px": 56, "state_dict": {}},
    {"format": "closedloop-core", "version": 1, "nums_filters": list(FILTERS), "input_px": -3,
     "state_dict": _compact().state_dict()},
    {"format": "closedloop-core", "version": 1, "nums_filters": list(FILTERS), "input_px": 56,
     "state_dict": _compact().state_dict(), "provenance": "not a dict"},
])
def test_core_file_with_bad_fields_is_refused(header, tmp_path):
    path = tmp_path / "core.pt"
    torch.save(header, path)
    for read in (read_core, describe):
        with pytest.raises(ClosedLoopError) as info:
            read(path)
        _one_line(info, path)


def test_published_model_with_odd_nums_filters_is_refused(tmp_path):
    path = _published(tmp_path)
    for content in (b"", b"garbage", None):
        sibling = path.with_name(path.stem + ".nums_filters.npy")
        if content is None:
            np.save(sibling, np.array(["a", "b"]))
        else:
            sibling.write_bytes(content)
        with pytest.raises(ClosedLoopError) as info:
            load_published(path)
        _one_line(info, sibling)


class _Pixels(torch.nn.Module):
    """One output per pixel: the output count follows the image size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1).flatten(1)


def test_a_model_giving_another_output_count_than_when_opened_is_named(tmp_path):
    path = save_torchscript(_Pixels(), tmp_path / "pixels.pt", input_px=16)
    model = load_model(path)
    model.input_px = None  # run every size as given, as a model without a fixed input does
    assert model.predict(np.zeros((2, 16, 16, 3), np.uint8)).shape == (2, 256)
    with pytest.raises(ClosedLoopError) as info:
        model.predict(np.zeros((2, 8, 8, 3), np.uint8))
    assert "64 outputs per 8x8 px image, not the 256" in _one_line(info, path)


# ------------------------------------------------------ model files, damaged --
TORCH_READERS = ["model-own", "model-published", "model-torchscript", "published", "core-file", "core-describe",
                 "core-network-torch"]


@pytest.mark.parametrize("name", TORCH_READERS + ["model-onnx", "onnx-model", "core-network-onnx"])
@pytest.mark.parametrize("key, value", [("layers.layer1_conv_depth.weight", float("inf")),
                                        ("layers.layer1_bn.running_mean", float("nan"))])
def test_non_finite_weights_are_refused_naming_the_tensor(name, key, value, tmp_path, monkeypatch):
    def poisoned(seed: int = 0) -> CompactModel:
        network = randomise_batchnorm(CompactModel(FILTERS), seed)
        network.state_dict()[key][0] = value
        return network

    monkeypatch.setitem(globals(), "_compact", poisoned)  # every valid file below is written from it
    path = READERS[name].valid(tmp_path)
    with pytest.raises(ClosedLoopError) as info:
        READERS[name].read(path)
    message = _one_line(info, path)
    assert "holds non-finite values" in message, message
    if "onnx" not in name:  # ONNX export may fold a BatchNorm into the convolution before it
        assert f"{key}' holds" in message, message  # TorchScript names it inside the pixel module


@pytest.mark.parametrize("name", TORCH_READERS)
def test_a_torch_zip_with_a_damaged_member_name_is_refused(name, tmp_path):
    path = READERS[name].valid(tmp_path)
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")  # the central directory's first entry; torch marks its names UTF-8
    data[entry + 47] = 0xFF  # a byte of its name: not UTF-8
    path.write_bytes(bytes(data))
    with pytest.raises(ClosedLoopError) as info:
        READERS[name].read(path)
    assert "unreadable or corrupt" in _one_line(info, path)
