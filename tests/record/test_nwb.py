import json
import warnings
from datetime import datetime, timezone

import neo
import numpy as np
import pynwb
import pytest
from pynwb import NWBHDF5IO

from closedloop.config import Protocol, to_jsonable
from closedloop.errors import ClosedLoopError
from closedloop.record import SessionWriter
from closedloop.record.nwb import export_nwb
from closedloop.stimuli import generate_pool

T = 5000.0  # s, LSL clock: the first spike, before the first onset
UNITS = [{"name": "v4a", "channel": 1, "unit": 1}, {"name": "v4b", "channel": 1, "unit": 2},
         {"name": "v4c", "channel": 3, "unit": 1}]
SHOWN = [0, 5, 2, 5, 7, 1]  # pool indices; 5 is shown twice
ROLES = ["chosen", "heldout", "chosen", "control", "heldout", "requeued"]
PROTOCOL = to_jsonable(Protocol.model_validate({"protocol": {"name": "nwbtest", "seed": 3, "presentations": 6},
                                                "window": {"start": 0.05, "end": 0.15}}))
RIG = {"rig": {"name": "bench", "simulated": False}, "recorded_units": UNITS}


@pytest.fixture(scope="module")
def pool():
    return generate_pool({"dot": 4, "grating": 4}, 32, seed=0)


def make_session(path, pool, complete=True, answered=range(len(SHOWN))):
    """A session written by the real SessionWriter; returns what was written."""
    rng = np.random.default_rng(1)
    writer = SessionWriter(path, PROTOCOL, RIG, pool)
    markers, responses = [], []
    for i, p in enumerate(SHOWN):
        onset = T + 0.01 + 0.25 * i
        markers.append({"index": i, "stimulus": pool.ids[p], "pool_index": p, "role": ROLES[i],
                        "onset": onset, "offset": onset + 0.1, "dropped_frames": i % 2,
                        "frame_intervals": [1 / 60 + 0.001 * i] * 3, "trial": i // 4,
                        **({"aborted": True} if i == 3 else {})})
        writer.log("markers", markers[-1])
    spikes = np.sort(T + rng.uniform(0, 1.6, 80))
    spikes[0] = T
    pair = rng.integers(0, 3, 80)
    channels = np.array([UNITS[k]["channel"] for k in pair])
    units = np.array([UNITS[k]["unit"] for k in pair])
    channels[[10, 40]], units[[10, 40]] = 9, 1  # channel 9 is not in the rig
    writer.spikes(spikes[:50], channels[:50], units[:50])
    writer.spikes(spikes[50:], channels[50:], units[50:])
    for i in answered:
        counts = [int(rng.integers(0, 9)) for _ in UNITS]
        responses.append({"index": i, "onset": markers[i]["onset"], "counts": counts,
                          "stimulus": markers[i]["stimulus"], "pool_index": SHOWN[i], "role": ROLES[i],
                          **({"gap": True} if i == 4 else {})})
        writer.log("responses", responses[-1])
    writer.log("events", {"kind": "spike_gap", "stream": "spikes", "start": T + 1.0, "end": T + 1.05,
                          "seconds": 0.05, "time": T + 1.3})
    writer.close({"presentations": len(SHOWN)} if complete else None)
    return {"markers": markers, "responses": responses, "times": spikes, "channels": channels, "units": units}


def export_quietly(session, target, **kwargs):
    """export_nwb with every warning an error: pynwb/hdmf warn when they are misused."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return export_nwb(session, target, **kwargs)


def written_times(w, channel, unit):
    mine = (w["channels"] == channel) & (w["units"] == unit)
    return np.sort(w["times"][mine])


def test_pynwb_reads_back_everything(tmp_path, pool):
    w = make_session(tmp_path / "s1", pool)
    target = tmp_path / "out.nwb"
    assert export_quietly(tmp_path / "s1", target) == target
    assert pynwb.validate(path=str(target)) == []
    with NWBHDF5IO(str(target), "r") as io:
        f = io.read()
        book = json.loads(f.data_collection)
        t0 = book["lsl_t0"]
        assert t0 == T and repr(T) in f.session_description
        assert book["complete"] is True and book["summary"] == {"presentations": 6}
        assert book["unlisted_spikes"] == [{"channel": 9, "unit": 1, "spikes": 2}]

        # metadata
        assert f.identifier == "s1" and "nwbtest" in f.session_description
        assert f.protocol == (tmp_path / "s1" / "protocol.json").read_text()
        assert json.loads(f.protocol) == PROTOCOL and json.loads(f.notes) == RIG
        assert f.notes == (tmp_path / "s1" / "rig.json").read_text()
        mtime = (tmp_path / "s1" / "protocol.json").stat().st_mtime
        assert f.session_start_time == datetime.fromtimestamp(mtime, tz=timezone.utc)

        # units: the rig's, in order, then the unlisted pair
        units = f.units
        assert list(units["unit_name"][:]) == ["v4a", "v4b", "v4c", "unlisted channel 9 unit 1"]
        assert list(units["channel"][:]) == [1, 1, 3, 9] and list(units["unit"][:]) == [1, 2, 1, 1]
        assert list(units["recorded"][:]) == [True, True, True, False]
        total = 0
        for k, (channel, unit) in enumerate([(1, 1), (1, 2), (3, 1), (9, 1)]):
            times = np.asarray(units.get_unit_spike_times(k)) + t0
            np.testing.assert_array_equal(times, written_times(w, channel, unit))
            assert np.all(np.asarray(units.get_unit_spike_times(k)) >= 0)
            total += len(times)
        assert total == len(w["times"])  # no spike dropped

        # presentations
        table = f.intervals["presentations"]
        assert len(table) == len(SHOWN)
        np.testing.assert_array_equal(table["start_time"][:] + t0, [m["onset"] for m in w["markers"]])
        np.testing.assert_array_equal(table["stop_time"][:] + t0, [m["offset"] for m in w["markers"]])
        assert list(table["presentation"][:]) == list(range(len(SHOWN)))
        assert list(table["stimulus_id"][:]) == [pool.ids[p] for p in SHOWN]
        assert list(table["pool_index"][:]) == SHOWN and list(table["role"][:]) == ROLES
        assert list(table["family"][:]) == [pool.families[p] for p in SHOWN]
        assert [json.loads(p) for p in table["params"][:]] == [pool.params[p] for p in SHOWN]
        assert list(table["dropped_frames"][:]) == [i % 2 for i in range(len(SHOWN))]
        assert list(table["trial"][:]) == [i // 4 for i in range(len(SHOWN))]
        assert list(table["aborted"][:]) == [i == 3 for i in range(len(SHOWN))]
        assert [list(x) for x in table["frame_intervals"][:]] == [m["frame_intervals"] for m in w["markers"]]
        np.testing.assert_array_equal(table["counts"][:], [r["counts"] for r in w["responses"]])
        assert list(table["responded"][:]) == [True] * 6
        assert list(table["gap"][:]) == [False, False, False, False, True, False]

        # spike gaps
        invalid = f.invalid_times
        assert invalid["start_time"][:] + t0 == [T + 1.0] and invalid["stop_time"][:] + t0 == [T + 1.05]

        # images: the distinct ones shown, pixel for pixel
        images = f.stimulus_template["stimuli"]
        assert sorted(images.images) == sorted({pool.ids[p] for p in SHOWN})
        for p in set(SHOWN):
            image = images.images[pool.ids[p]]
            assert isinstance(image, pynwb.image.RGBImage) and image.data.compression == "gzip"
            assert image.data.dtype == np.uint8
            np.testing.assert_array_equal(image.data[:], pool.images[p])
        assert [im.name for im in images.order_of_images] == [pool.ids[p] for p in sorted(set(SHOWN))]


def test_neo_reads_the_spike_trains(tmp_path, pool):
    w = make_session(tmp_path / "s1", pool)
    target = export_quietly(tmp_path / "s1", tmp_path / "out.nwb")
    blocks = neo.io.NWBIO(str(target), mode="r").read_all_blocks()
    t0 = json.loads(blocks[0].annotations["data_collection"])["lsl_t0"]  # the time reference reaches neo
    assert t0 == T
    trains = [st for block in blocks for seg in block.segments for st in seg.spiketrains]
    assert [st.name for st in trains] == ["v4a", "v4b", "v4c", "unlisted channel 9 unit 1"]
    for st, (channel, unit) in zip(trains, [(1, 1), (1, 2), (3, 1), (9, 1)]):
        np.testing.assert_array_equal(st.rescale("s").magnitude + t0, written_times(w, channel, unit))
        assert float(st.t_start) == 0.0 and float(st.t_stop) >= float(st.max())
    assert json.loads(blocks[0].annotations["protocol"]) == PROTOCOL
    assert json.loads(blocks[0].annotations["notes"]) == RIG


def test_a_killed_run_exports(tmp_path, pool):
    w = make_session(tmp_path / "s1", pool, complete=False, answered=[0, 1, 2, 4])
    with open(tmp_path / "s1" / "markers.jsonl", "a") as f:
        f.write('{"index": 6, "stimu')  # the line the kill cut
    target = export_quietly(tmp_path / "s1", tmp_path / "out.nwb")
    with NWBHDF5IO(str(target), "r") as io:
        f = io.read()
        book = json.loads(f.data_collection)
        assert book["complete"] is False and book["summary"] is None
        table = f.intervals["presentations"]
        assert len(table) == 6
        assert list(table["responded"][:]) == [True, True, True, False, True, False]
        counts = table["counts"][:]
        assert np.isnan(counts[[3, 5]]).all()  # missing, never zero
        np.testing.assert_array_equal(counts[[0, 1, 2, 4]], [r["counts"] for r in w["responses"]])
        assert len(f.units) == 4


def test_bad_sessions_raise_one_line_naming_the_path(tmp_path, pool):
    def refused(session, match):
        with pytest.raises(ClosedLoopError, match=match) as info:
            export_nwb(session, tmp_path / "out.nwb")
        message = str(info.value)
        assert "\n" not in message and str(session) in message
        assert [p.name for p in tmp_path.iterdir() if "nwb" in p.name] == []  # no output, no partial file

    refused(tmp_path / "nothing", "not a directory")
    (tmp_path / "afile").write_text("x")
    refused(tmp_path / "afile", "not a directory")

    make_session(tmp_path / "s", pool)
    markers = (tmp_path / "s" / "markers.jsonl").read_text()
    (tmp_path / "s" / "markers.jsonl").write_text(markers.replace(pool.ids[7], "0" * 16))
    refused(tmp_path / "s", "markers.jsonl line 5: field 'stimulus': '0000000000000000' is not pool image 7")
    (tmp_path / "s" / "markers.jsonl").write_text(markers.replace('"offset"', '"off"'))
    refused(tmp_path / "s", "markers.jsonl line 1: field 'offset': Field required")
    (tmp_path / "s" / "markers.jsonl").write_text("{not json}\n")
    refused(tmp_path / "s", "markers.jsonl line 1: not JSON")
    (tmp_path / "s" / "markers.jsonl").write_text(markers)

    responses = (tmp_path / "s" / "responses.jsonl").read_text()
    (tmp_path / "s" / "responses.jsonl").write_text(responses.replace('"counts": [', '"counts": [1, '))
    refused(tmp_path / "s", "responses.jsonl line 1: field 'counts': 4 counts for the 3 recorded units")
    (tmp_path / "s" / "responses.jsonl").write_text(responses.replace('"counts": [', '"counts": [-1, ', 1))
    refused(tmp_path / "s", r"responses.jsonl line 1: field 'counts\[0\]': Input should be greater than or equal to 0")
    (tmp_path / "s" / "responses.jsonl").write_text(responses + responses.splitlines(keepends=True)[2])
    refused(tmp_path / "s", "responses.jsonl line 7: field 'index': presentation 2 answered twice")
    (tmp_path / "s" / "responses.jsonl").write_text(responses)

    (tmp_path / "s" / "rig.json").write_text(json.dumps({"rig": {}}))
    refused(tmp_path / "s", "rig.json: field 'recorded_units': missing")
    (tmp_path / "s" / "protocol.json").write_text("{cut")
    refused(tmp_path / "s", "protocol.json: not JSON")
    (tmp_path / "s" / "spikes.bin").unlink()
    refused(tmp_path / "s", "missing spikes.bin")


def test_an_existing_file_is_kept_unless_overwrite(tmp_path, pool):
    make_session(tmp_path / "s", pool)
    target = tmp_path / "out.nwb"
    target.write_bytes(b"keep me")
    with pytest.raises(ClosedLoopError, match="already exists") as info:
        export_nwb(tmp_path / "s", target)
    assert str(target) in str(info.value) and "\n" not in str(info.value)
    assert target.read_bytes() == b"keep me"
    export_quietly(tmp_path / "s", target, overwrite=True)
    with NWBHDF5IO(str(target), "r") as io:
        assert len(io.read().intervals["presentations"]) == len(SHOWN)


def test_a_failed_write_leaves_no_half_file(tmp_path, pool, monkeypatch):
    make_session(tmp_path / "s", pool)
    target = tmp_path / "out.nwb"
    target.write_bytes(b"keep me")

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(NWBHDF5IO, "write", full_disk)
    with pytest.raises(ClosedLoopError, match="No space left") as info:
        export_nwb(tmp_path / "s", target, overwrite=True)
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nwb", "s"]
