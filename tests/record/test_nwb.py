import hashlib
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
PROTOCOL = to_jsonable(Protocol.model_validate({
    "protocol": {"name": "nwbtest", "seed": 3, "presentations": 6, "description": "curvature tuning in V4",
                 "keywords": ["V4", "closed loop"]},
    "window": {"start": 0.05, "end": 0.15}}))
SUBJECT = {"id": "M1", "species": "Macaca mulatta", "sex": "F", "age": "P8Y", "description": "rhesus macaque"}
RIG = {"rig": {"name": "bench", "simulated": False}, "subject": SUBJECT,
       "lab": {"experimenter": ["Doe, Jane"], "institution": "Test University", "lab": "Vision lab"},
       "recording": {"device": "Utah array", "manufacturer": "Blackrock", "location": "V4",
                     "description": "96-channel array"},
       "recorded_units": UNITS}
GAZE = {"key": "gaze", "role": "gaze", "name": "eye", "type": "Gaze", "source_id": "eye-1", "hostname": "pc",
        "channel_count": 2, "nominal_srate": 500.0, "labels": ["x", "y"], "units": ["degrees", "degrees"],
        "types": ["", ""]}
LIGHT = {"key": "photodiode", "role": "photodiode", "name": "light", "type": "Photodiode", "source_id": "pd-1",
         "hostname": "pc", "channel_count": 1, "nominal_srate": 0.0, "labels": ["light"], "units": ["V"],
         "types": [""]}
TRIALS = [{"kind": "trial", "trial": 0, "end": "completed", "shown": [0, 1, 2, 3], "requeued": [],
           "reward": T + 1.0, "time": T + 1.02},
          {"kind": "trial", "trial": 1, "end": "fixation_break", "shown": [4, 5], "requeued": [7],
           "reward": None, "time": T + 1.6}]


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
    for trial in TRIALS:
        writer.log("events", trial)
    writer.log("selections", {"strategy": "disagreement", "chosen": [0, 5, 2], "scores": [0.9, 0.5, 0.25],
                              "responses": 0, "turnaround_ms": 1.5, "state": {"posterior": [0.1]}, "time": T + 0.005})
    writer.log("selections", {"strategy": "disagreement", "chosen": [7, 1], "responses": 4, "time": T + 1.1})
    frames = T + 0.01 + np.arange(90) / 60 + rng.uniform(0, 1e-4, 90)  # every flip, not quite regular
    writer.frames(frames)
    writer.stream_header("gaze", GAZE)
    gaze_times = T + 0.002 + np.arange(400) / 500  # regular: written as starting time and rate
    gaze = np.c_[np.sin(gaze_times), np.cos(gaze_times)]
    writer.samples("gaze", gaze_times, gaze)
    writer.stream_header("photodiode", LIGHT)
    light_times = np.sort(T + rng.uniform(0.003, 1.5, 50))
    writer.samples("photodiode", light_times, rng.uniform(0, 5, (50, 1)))
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "learner-000004.pt").write_bytes(b"early")
    (path / "checkpoints" / "learner-final.pt").write_bytes(b"weights")
    writer.close({"presentations": len(SHOWN)} if complete else None)
    return {"markers": markers, "responses": responses, "times": spikes, "channels": channels, "units": units,
            "frames": frames, "gaze": (gaze_times, gaze), "light": light_times}


def export_quietly(session, target=None, **kwargs):
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
        s = f.subject
        assert (s.subject_id, s.species, s.sex, s.age, s.description) == tuple(SUBJECT.values())
        assert f.session_id == "s1" and list(f.experimenter) == ["Doe, Jane"]
        assert (f.institution, f.lab) == ("Test University", "Vision lab")
        assert f.experiment_description == "curvature tuning in V4; keywords: V4, closed loop"

        # hardware: one electrode per channel the units use, each unit linked to its channel's
        device = f.devices["Utah array"]
        assert device.model.manufacturer == "Blackrock"
        group = f.electrode_groups["electrode_group"]
        assert group.location == "V4" and group.device is device and group.description == "96-channel array"
        assert list(f.electrodes["channel"][:]) == [1, 3, 9] and list(f.electrodes["location"][:]) == ["V4"] * 3

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
        for k, channel in enumerate([1, 1, 3, 9]):
            assert units["electrodes"][k]["channel"].tolist() == [channel]
        assert units.resolution == np.diff(np.unique(w["times"])).min()

        # presentations
        table = f.intervals["presentations"]
        assert len(table) == len(SHOWN)
        np.testing.assert_array_equal(table["start_time"][:] + t0, [m["onset"] for m in w["markers"]])
        np.testing.assert_array_equal(table["stop_time"][:] + t0, [m["offset"] for m in w["markers"]])
        assert list(table["presentation"][:]) == list(range(len(SHOWN)))
        assert list(table["stimulus_id"][:]) == [pool.ids[p] for p in SHOWN]
        assert list(table["pool_index"][:]) == SHOWN and list(table["role"][:]) == ROLES
        assert list(table["family"][:]) == [pool.families[p] for p in SHOWN]
        for name in {k for p in SHOWN for k in pool.params[p]}:  # one typed column per parameter name
            column = table[f"param_{name}"]
            for row, p in enumerate(SHOWN):
                value = pool.params[p].get(name)
                got = column[row]
                if value is None:  # the family lacks it
                    assert got == "" if isinstance(got, str) else np.size(got) == 0 or np.isnan(got)
                elif isinstance(value, list):
                    np.testing.assert_array_equal(np.asarray(got), np.asarray(value, float))
                else:
                    assert got == value
        assert book["stimulus_params"] == {pool.ids[p]: pool.params[p] for p in sorted(set(SHOWN))}
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
        which = f.processing["misc"]["presented_images"]  # each onset's image
        assert which.indexed_images is images
        assert [images.order_of_images[k].name for k in which.data[:]] == [pool.ids[p] for p in SHOWN]
        np.testing.assert_allclose(which.get_timestamps() + t0, [m["onset"] for m in w["markers"]], rtol=0, atol=1e-9)

        # neo's view of the presentations
        epochs = f.epochs
        assert [list(t) for t in epochs["tags"][:]] == [[pool.ids[p]] for p in SHOWN]
        np.testing.assert_array_equal(epochs["start_time"][:], table["start_time"][:])

        # trials
        trials = f.trials
        assert list(trials["trial"][:]) == [0, 1] and list(trials["outcome"][:]) == ["completed", "fixation_break"]
        assert [list(x) for x in trials["presentations"][:]] == [[0, 1, 2, 3], [4, 5]]
        assert [list(x) for x in trials["requeued"][:]] == [[], [7]]
        assert list(trials["rewarded"][:]) == [True, False]
        assert trials["reward_time"][0] + t0 == T + 1.0 and np.isnan(trials["reward_time"][1])
        np.testing.assert_allclose(trials["stop_time"][:] + t0, [T + 1.02, T + 1.6], rtol=0, atol=1e-9)
        np.testing.assert_allclose(trials["start_time"][:] + t0, [w["frames"][0], T + 1.02], rtol=0, atol=1e-9)

        # display flips, decisions, checkpoints
        flips = f.processing["misc"]["display_flips"]
        np.testing.assert_allclose(flips.timestamps[:] + t0, w["frames"], rtol=0, atol=1e-9)
        selections = f.processing["misc"]["selections"]
        assert list(selections["strategy"][:]) == ["disagreement"] * 2
        assert [list(x) for x in selections["chosen"][:]] == [[0, 5, 2], [7, 1]]
        assert [list(x) for x in selections["scores"][:]] == [[0.9, 0.5, 0.25], []]
        assert list(selections["responses"][:]) == [0, 4]
        assert selections["turnaround_ms"][0] == 1.5 and np.isnan(selections["turnaround_ms"][1])
        assert "state" in selections.description and "state" not in selections.colnames
        checkpoints = f.processing["misc"]["checkpoints"]
        assert list(checkpoints["path"][:]) == ["checkpoints/learner-000004.pt", "checkpoints/learner-final.pt"]
        assert list(checkpoints["sha256"][:]) == [hashlib.sha256(b).hexdigest() for b in (b"early", b"weights")]
        assert list(checkpoints["bytes"][:]) == [5, 7]

        # gaze and photodiode
        gaze = f.processing["behavior"]["eye_tracking"]["gaze"]
        assert gaze.unit == "degrees" and gaze.reference_frame == "degrees from fixation point; x right, y up"
        assert abs(gaze.rate - 500.0) < 1e-6 and abs(gaze.starting_time + t0 - w["gaze"][0][0]) < 1e-9
        np.testing.assert_array_equal(gaze.data[:], w["gaze"][1])
        light = f.acquisition["photodiode"]
        assert light.unit == "V" and light.data.shape == (50,)
        np.testing.assert_allclose(light.timestamps[:] + t0, w["light"], rtol=0, atol=1e-9)


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


def test_an_archive_accepts_it(tmp_path, pool):
    """nwbinspector with DANDI's configuration (what `dandi validate` runs): nothing critical, no
    best-practice violation; no suggestion but the keywords (kept in the experiment description:
    neo's NWBIO cannot read a file with /general/keywords) and a table of one row."""
    from nwbinspector import Importance, inspect_nwbfile, load_config

    make_session(tmp_path / "s1", pool)
    target = export_quietly(tmp_path / "s1", tmp_path / "out.nwb")
    messages = list(inspect_nwbfile(nwbfile_path=str(target), config=load_config("dandi")))
    for m in messages:
        print(m.importance.name, m.check_function_name, m.location, m.message)
    assert not [m for m in messages if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)]
    # suggestions only: the keywords, and tables of one row (the test session's one spike gap)
    assert {m.check_function_name for m in messages} <= {"check_keywords", "check_single_row"}
    assert pynwb.validate(path=str(target)) == []


def test_neo_reads_the_presentations_as_an_epoch_of_stimulus_ids(tmp_path, pool):
    w = make_session(tmp_path / "s1", pool)
    target = export_quietly(tmp_path / "s1", tmp_path / "out.nwb")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        blocks = neo.io.NWBIO(str(target), mode="r").read_all_blocks()
    epochs = [e for block in blocks for seg in block.segments for e in seg.epochs]
    assert [e.name for e in epochs] == ["presentations"]
    epoch = epochs[0]
    assert list(epoch.labels) == [pool.ids[p] for p in SHOWN]
    np.testing.assert_allclose(epoch.times.rescale("s").magnitude + T, [m["onset"] for m in w["markers"]],
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(epoch.durations.rescale("s").magnitude, 0.1, rtol=0, atol=1e-9)


def test_closedloop_responses_reads_its_own_export(tmp_path, pool):
    """`closedloop responses FILE.nwb`, no options: the session's own response table, on its clock."""
    from click.testing import CliRunner

    from closedloop.cli import main
    from closedloop.record import read_session
    from closedloop.replay import response_table, session_recording

    make_session(tmp_path / "s1", pool)
    target = export_quietly(tmp_path / "s1", tmp_path / "out.nwb")
    result = CliRunner().invoke(main, ["responses", str(target)])
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in result.output.splitlines()]
    want = response_table(session_recording(read_session(tmp_path / "s1")), 0.05, 0.15)
    assert [(r["index"], r["stimulus"], r["counts"], r["pool_index"], r["role"]) for r in got] == \
           [(r["index"], r["stimulus"], r["counts"], r["pool_index"], r["role"]) for r in want]
    np.testing.assert_allclose([r["onset"] for r in got], [r["onset"] for r in want], rtol=0, atol=1e-9)


@pytest.mark.parametrize("field, option", [("id", "subject-id"), ("species", "species"), ("sex", "sex"),
                                           ("age", "age")])
def test_a_missing_subject_field_is_one_line_naming_it_and_its_option(tmp_path, pool, field, option):
    make_session(tmp_path / "s1", pool)
    rig = json.loads((tmp_path / "s1" / "rig.json").read_text())
    del rig["subject"][field]
    (tmp_path / "s1" / "rig.json").write_text(json.dumps(rig))
    with pytest.raises(ClosedLoopError) as info:
        export_nwb(tmp_path / "s1", tmp_path / "out.nwb")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "s1") in message
    assert f"set [subject] {field} in the rig file or pass --{option}" in message
    assert not (tmp_path / "out.nwb").exists()
    given = {"id": "M2", "species": "Macaca mulatta", "sex": "M", "age": "P5Y"}[field]
    export_quietly(tmp_path / "s1", tmp_path / "out.nwb", subject={field: given})  # the option fills it
    with NWBHDF5IO(str(tmp_path / "out.nwb"), "r") as io:
        subject = io.read().subject
        assert getattr(subject, "subject_id" if field == "id" else field) == given


def test_a_session_named_for_its_subject_needs_no_subject_id(tmp_path, pool):
    make_session(tmp_path / "sub-M3_ses-20260101T000000-nwbtest", pool)
    rig_json = tmp_path / "sub-M3_ses-20260101T000000-nwbtest" / "rig.json"
    rig = json.loads(rig_json.read_text())
    del rig["subject"]["id"]
    rig_json.write_text(json.dumps(rig))
    target = export_quietly(rig_json.parent)
    assert target == tmp_path / "sub-M3" / "sub-M3_ses-20260101T000000-nwbtest_behavior+ecephys+image.nwb"
    with NWBHDF5IO(str(target), "r") as io:
        f = io.read()
        assert f.subject.subject_id == "M3" and f.session_id == "20260101T000000-nwbtest"


def test_command_line_overrides_land_in_the_file(tmp_path, pool):
    """`closedloop export SESSION --subject-id ...` without --nwb: the file goes where DANDI's organize
    would put it, with the options' values over the rig's."""
    from click.testing import CliRunner

    from closedloop.cli import main

    make_session(tmp_path / "s1", pool)
    result = CliRunner().invoke(main, ["export", str(tmp_path / "s1"), "--subject-id", "M9", "--sex", "U",
                                       "--age", "P9Y", "--species", "Macaca nemestrina", "--experimenter", "Roe, Ann",
                                       "--experimenter", "Poe, Bo", "--institution", "Elsewhere", "--lab", "Lab 2"])
    assert result.exit_code == 0, result.output
    target = tmp_path / "sub-M9" / "sub-M9_ses-s1_behavior+ecephys+image.nwb"
    with NWBHDF5IO(str(target), "r") as io:
        f = io.read()
        s = f.subject
        assert (s.subject_id, s.species, s.sex, s.age) == ("M9", "Macaca nemestrina", "U", "P9Y")
        assert list(f.experimenter) == ["Roe, Ann", "Poe, Bo"] and (f.institution, f.lab) == ("Elsewhere", "Lab 2")
    bad = CliRunner().invoke(main, ["export", str(tmp_path / "s1"), "--nwb", str(tmp_path / "x.nwb"),
                                    "--age", "seven"])
    assert bad.exit_code == 2 and "--age: " in bad.output
    assert not (tmp_path / "x.nwb").exists()
