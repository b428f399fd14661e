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


def test_model_paths_resolve_against_the_rig_file():
    rig = load_rig(ROOT / "rigs" / "sim-v4.toml")
    assert rig.simulation.neurons[0].path == (ROOT / ".." / "shared" / "v4" / "compact_models").resolve()


@pytest.mark.parametrize("text, message", [
    ("[protocol]\nname = 'x'\npresentations = -1\n", "field 'protocol.presentations'"),
    ("[protocol]\nname = 'x'\n[window]\nstart = 0.2\nend = 0.1\n", "field 'window'.*end must be after start"),
    ("[protocol]\nname = 'x'\n[selection]\nstrategy = 'best'\n", "unknown strategy 'best'"),
    ("[protocol]\nname = 'x'\nspeed = 3\n", "field 'protocol.speed'"),
    ("[protocol\n", "not valid TOML"),
    ("[window]\nstart = 0.1\n", "field 'protocol'"),
])
def test_bad_protocols_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ClosedLoopError, match=message) as info:
        load_protocol(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


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
    path = tmp_path / "rig.toml"
    path.write_text(text)
    with pytest.raises(ClosedLoopError, match=message):
        load_rig(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ClosedLoopError, match="rig file .*nope.toml: not found"):
        load_rig(tmp_path / "nope.toml")
