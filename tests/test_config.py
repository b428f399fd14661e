import ast
import subprocess
import sys
from pathlib import Path

import pytest

from closedloop.config import load_protocol, load_rig, with_metadata
from closedloop.errors import ClosedLoopError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_files_load():
    protocol = load_protocol(ROOT / "protocols" / "demo.toml")
    rig = load_rig(ROOT / "rigs" / "sim.toml")
    assert protocol.selection.strategy == "disagreement"
    assert protocol.window.start == 0.05 and protocol.window.end == 0.15
    assert rig.rig.simulated and [n.kind for n in rig.simulation.neurons] == ["curvature", "dot", "orientation"]


def test_the_stimulus_set_resolves_against_the_protocol_file(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.toml").write_text("[protocol]\nname = 'x'\n[pool]\nset = '../sets/a.toml'\n")
    assert load_protocol(tmp_path / "p" / "x.toml").pool.set == (tmp_path / "sets" / "a.toml").resolve()
    assert load_protocol(ROOT / "protocols" / "demo.toml").pool.set == ROOT / "stimuli" / "demo.toml"
    core = load_protocol(ROOT / "protocols" / "v4-twins.toml").model.core  # a core from the shared models
    assert core.kind == "compact" and core.path == (ROOT.parent / "shared" / "v4" / "compact_models").resolve()


def test_model_paths_resolve_against_the_rig_file():
    rig = load_rig(ROOT / "rigs" / "sim-v4.toml")
    assert rig.simulation.neurons[0].path == (ROOT / ".." / "shared" / "v4" / "compact_models").resolve()


def _assert_one_line_naming(load, path: Path, text: str, message: str) -> None:
    """Loading ``text`` from ``path`` fails with one line that names the file and says ``message``."""
    path.write_text(text)
    with pytest.raises(ClosedLoopError, match=message) as info:
        load(path)
    assert f" file {path}: " in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("[protocol]\nname = 'x'\npresentations = -1\n", "field 'protocol.presentations'"),
    ("[protocol]\nname = 'x'\n[window]\nstart = 0.2\nend = 0.1\n", "field 'window'.*end must be after start"),
    ("[protocol]\nname = 'x'\nspeed = 3\n", "field 'protocol.speed'"),
    ("[protocol\n", "not valid TOML"),
    ("[window]\nstart = 0.1\n", "field 'protocol'"),
    ("[protocol]\nname = 'x'\n[trial]\nimages = 8\n", r"selection.batch \(4\) must be at least trial.images \(8\)"),
    ("[protocol]\nname = 'x'\n[trial]\nhold = -0.1\n", "field 'trial.hold'"),
    ("[protocol]\nname = 'x'\n[stimulus]\nsize_deg = 0\n", "field 'stimulus.size_deg'"),
    ("[protocol]\nname = 'x'\n[stimulus]\nposition_deg = [88, 0]\n", "the patch reaches 90 degrees"),
    ("[protocol]\nname = 'x'\n[stimulus]\nbackground = 1.5\n", "field 'stimulus.background'"),
])
def test_bad_protocols_name_the_file_and_field(tmp_path, text, message):
    _assert_one_line_naming(load_protocol, tmp_path / "bad.toml", text, message)


@pytest.mark.parametrize("text, message", [
    ("[rig]\nname = 'r'\n", "at least one \\[\\[units\\]\\]"),
    ("[rig]\nname = 'r'\nsimulated = true\n", "needs a \\[simulation\\] table"),
    ("[rig]\nname = 'r'\nsimulated = true\n[simulation]\n[[simulation.neurons]]\nkind = 'compact'\n",
     "needs a 'path'"),
    ("[rig]\nname = 'r'\nsimulated = true\n[simulation]\n[[simulation.neurons]]\nkind = 'grandmother'\n",
     "field 'simulation.neurons.0.kind'"),
    ("[rig]\nname = 'r'\n[display]\nrefresh_rate = 0\n[[units]]\nname = 'a'\nchannel = 1\n",
     "field 'display.refresh_rate'"),
])
def test_bad_rigs_name_the_file_and_field(tmp_path, text, message):
    _assert_one_line_naming(load_rig, tmp_path / "rig.toml", text, message)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ClosedLoopError, match="rig file .*nope.toml: not found"):
        load_rig(tmp_path / "nope.toml")


# Values a user's fuzz run found passing validation, then crashing or misbehaving in a run: each is
# now refused on load, naming the field.
PROTOCOL_DEFECTS = [
    ("trial", "hold", "inf", "trial.hold"),
    ("trial", "iti", "inf", "trial.iti"),
    ("trial", "iti", "1e300", "trial.iti"),
    ("trial", "acquire", "1e-300", "trial.acquire"),
    ("window", "end", "inf", "window.end"),
    ("window", "end", "1e300", "window.end"),
    ("window", "start", "nan", "window.start"),
    ("stimulus", "position_deg", "[nan, 0]", "stimulus.position_deg.0"),
    ("model", "learning_rate", "inf", "model.learning_rate"),
    ("model", "learning_rate", "1e300", "model.learning_rate"),
    ("model", "channels", "[0, 16, 16, 16, 16]", "model.channels.0"),
    ("protocol", "seed", "-1", "protocol.seed"),
    ("protocol", "seed", "18446744073709551616", "protocol.seed"),
    ("protocol", "presentations", "9223372036854775807", "protocol.presentations"),
    ("pool", "families", "{ dot = 1000000000 }", "pool.families.dot"),
    ("pool", "families", "{ dot = 15000, grating = 15000 }", "pool"),
]


@pytest.mark.parametrize("table, key, value, field", PROTOCOL_DEFECTS)
def test_protocol_values_that_broke_runs_are_refused(tmp_path, table, key, value, field):
    setting = f"{key} = {value}\n" if table == "protocol" else f"[{table}]\n{key} = {value}\n"
    text = f"[protocol]\nname = 'x'\n{setting}"
    expected = f"field '{field}'" if field != "pool" else "a pool holds at most 20000"
    _assert_one_line_naming(load_protocol, tmp_path / "bad.toml", text, expected)


UNITS = "[[units]]\nname = 'a'\nchannel = 1\n"
SIMULATED = "[simulation]\n[[simulation.neurons]]\nkind = 'dot'\n"
RIG_DEFECTS = [
    ("[display]\nrefresh_rate = inf\n", "display.refresh_rate"),
    ("[display]\nrefresh_rate = 1e-300\n", "display.refresh_rate"),
    ("[display]\nrefresh_rate = 1e300\n", "display.refresh_rate"),
    ("[display]\nsize_cm = [inf, 30]\n", "display.size_cm.0"),
    ("[display]\ndistance_cm = inf\n", "display.distance_cm"),
    ("[display]\nsize_px = [100000, 100000]\n", "display.size_px.0"),
    ("[markers]\nname = ''\ntype = 'Markers'\n", "markers.name"),
    ("[markers]\nname = \"a\\nb\"\ntype = 'Markers'\n", "markers.name"),
    ("[spikes]\nname = 's'\ntype = 'Spikes'\nlost_after = inf\n", "spikes.lost_after"),
    ("[gaze]\nname = ' '\ntype = 'Gaze'\n", "gaze.name"),
    ("[[units]]\nname = 'b'\nchannel = 2147483648\n", "units.1.channel"),
    ("[[units]]\nname = ''\nchannel = 2\n", "units.1.name"),
    ("[subject]\nid = 'M_1'\n", "subject.id"),  # an underscore would split sub-<id>_ses-<id>
    ("[subject]\nspecies = 'monkey'\n", "subject.species"),
    ("[subject]\nsex = 'male'\n", "subject.sex"),
    ("[subject]\nage = '7 years'\n", "subject.age"),
    ("[subject]\nage = 'P'\n", "subject.age"),
    ("[lab]\nexperimenter = ['']\n", "lab.experimenter.0"),
    ("[[record]]\nname = 'r'\n", "record.0.type"),
]
SIMULATION_DEFECTS = [
    ("baseline_rate = inf\n", "simulation.baseline_rate"),
    ("latency = inf\n", "simulation.latency"),
    ("gain = inf\n", "simulation.gain"),
    ("gain = 1e300\n", "simulation.gain"),
    ("seed = -1\n", "simulation.seed"),
    ("calibration_images = 1000000\n", "simulation.calibration_images"),
]


@pytest.mark.parametrize("tables, field", RIG_DEFECTS)
def test_rig_values_that_broke_runs_are_refused(tmp_path, tables, field):
    _assert_one_line_naming(load_rig, tmp_path / "rig.toml", f"[rig]\nname = 'r'\n{UNITS}{tables}", f"field '{field}'")


@pytest.mark.parametrize("values, field", SIMULATION_DEFECTS)
def test_simulation_values_that_broke_runs_are_refused(tmp_path, values, field):
    text = f"[rig]\nname = 'r'\nsimulated = true\n[simulation]\n{values}[[simulation.neurons]]\nkind = 'dot'\n"
    _assert_one_line_naming(load_rig, tmp_path / "rig.toml", text, f"field '{field}'")


@pytest.mark.parametrize("text, message", [
    ("stall_after = 5.0\n[spikes]\nname = 's'\ntype = 'Spikes'\nlost_after = 5.0\n",
     r"spikes.lost_after \(5.0 s\) must be more than stall_after \(5.0 s\)"),
    ("[display]\nsize_px = [800, 600]\nphotodiode_patch = { size_px = 700 }\n", "photodiode_patch.size_px .* larger"),
    ("[[record]]\nname = 'closedloop-spikes'\ntype = 'Reward'\n", "a stream is named twice"),
])
def test_rig_cross_field_checks(tmp_path, text, message):
    _assert_one_line_naming(load_rig, tmp_path / "rig.toml", f"{text}[rig]\nname = 'r'\n{UNITS}", message)


@pytest.mark.parametrize("name, content, message", [
    ("rig.json", b"[]", "holds a JSON list, not an object"),
    ("rig.json", b"3", "holds a JSON int, not an object"),
    ("rig.json", b"{nope", "not valid JSON"),
    ("rig.toml", b"\xff\xfe\x00garbage", "not a text file"),
    ("rig.json", b"\xff\xfe\x00garbage", "not a text file"),
    ("rig.toml", None, "is a directory"),
])
def test_unreadable_files_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ClosedLoopError, match=message) as info:
        load_rig(path)
    assert str(info.value).startswith(f"rig file {path}: ") and "\n" not in str(info.value)


def test_subject_and_lab_come_from_the_rig_or_the_command_line(tmp_path):
    """The rig file's [subject] and [lab], replaced field by field by command-line values, each
    checked as the file's are, with one line naming the option."""
    path = tmp_path / "rig.toml"
    path.write_text(f"[rig]\nname = 'r'\n{UNITS}[subject]\nid = 'M1'\nspecies = 'Macaca mulatta'\nage = 'P7Y'\n"
                    "[lab]\ninstitution = 'Somewhere'\n")
    rig = load_rig(path)
    assert (rig.subject.id, rig.subject.species, rig.subject.age, rig.subject.sex) == ("M1", "Macaca mulatta", "P7Y", None)
    rig = with_metadata(rig, {"id": "M2", "sex": "F"}, {"experimenter": ["Doe, Jane"]})
    assert (rig.subject.id, rig.subject.species, rig.subject.sex) == ("M2", "Macaca mulatta", "F")
    assert rig.lab.experimenter == ["Doe, Jane"] and rig.lab.institution == "Somewhere"
    for subject, option in (({"species": "monkey"}, "--species"), ({"id": "M 2"}, "--subject-id"),
                            ({"age": "seven"}, "--age")):
        with pytest.raises(ClosedLoopError, match=f"^{option}: ") as info:
            with_metadata(rig, subject)
        assert "\n" not in str(info.value)


def test_config_is_a_leaf():
    """config.py imports nothing of closedloop but errors: no circle through the registries."""
    source = (ROOT / "closedloop" / "config.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import) for a in node.names}
    assert {m for m in imported if m and m.startswith("closedloop")} == {"closedloop.errors"}
    loaded = subprocess.run([sys.executable, "-c", "import sys, closedloop.config; print(' '.join(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.split()
    package = {m for m in loaded if m.startswith("closedloop")}
    assert package <= {"closedloop", "closedloop.config", "closedloop.errors", "closedloop.liblsl"}
    assert "torch" not in loaded
