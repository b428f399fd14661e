from pathlib import Path

import pytest

from closedloop.config import load_protocol, load_rig
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
    ("[protocol]\nname = 'x'\n[selection]\nstrategy = 'best'\n", "unknown strategy 'best'"),
    ("[protocol]\nname = 'x'\nspeed = 3\n", "field 'protocol.speed'"),
    ("[protocol\n", "not valid TOML"),
    ("[window]\nstart = 0.1\n", "field 'protocol'"),
    ("[protocol]\nname = 'x'\n[trial]\nimages = 8\n", r"selection.batch \(4\) must be at least trial.images \(8\)"),
    ("[protocol]\nname = 'x'\n[trial]\nhold = -0.1\n", "field 'trial.hold'"),
    ("[protocol]\nname = 'x'\n[stimulus]\nsize_deg = 0\n", "field 'stimulus.size_deg'"),
    ("[protocol]\nname = 'x'\n[stimulus]\nposition_deg = [88, 0]\n", "the patch reaches 90 degrees"),
    ("[protocol]\nname = 'x'\n[stimulus]\nbackground = 1.5\n", "field 'stimulus.background'"),
    ("[protocol]\nname = 'x'\n[selection]\nstrategy = 'info_gain'\n[selection.params]\ndiversity = 2\n",
     "field 'selection': strategy 'info_gain': params.diversity: Input should be less than or equal to 1"),
    ("[protocol]\nname = 'x'\n[selection]\nstrategy = 'adept'\n[selection.params]\nwieght = 2\n",
     "field 'selection': strategy 'adept': params.wieght: Extra inputs are not permitted"),
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
