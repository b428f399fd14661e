"""The checks a session makes before it creates anything: strategies, neurons, stimulus sets, geometry."""

import time
from pathlib import Path

import pytest

from closedloop.checks import check_protocol, check_rig, check_session, check_strategy
from closedloop.config import load_protocol, load_rig
from closedloop.errors import ClosedLoopError

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = "[protocol]\nname = 'x'\n[pool]\nfamilies = { dot = 50, grating = 50 }\n"


def _protocol(tmp_path: Path, extra: str = "", head: str = PROTOCOL):
    path = tmp_path / "protocol.toml"
    path.write_text(head + extra)
    return load_protocol(path)


def _simulated_rig(tmp_path: Path, neuron: str = "", simulation: str = "", display: str = ""):
    path = tmp_path / "rig.toml"
    path.write_text(f"[rig]\nname = 'r'\nsimulated = true\n[display]\n{display}\n[simulation]\n{simulation}\n"
                    f"[[simulation.neurons]]\nkind = 'dot'\n[[simulation.neurons]]\n{neuron}\n")
    return load_rig(path)


def _refused(check, *args, match: str) -> str:
    with pytest.raises(ClosedLoopError, match=match) as info:
        check(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("protocol", sorted((ROOT / "protocols").glob("*.toml")), ids=lambda p: p.name)
@pytest.mark.parametrize("rig", sorted((ROOT / "rigs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_files_pass(protocol, rig):
    check_session(load_protocol(protocol), load_rig(rig))


@pytest.mark.parametrize("selection, message", [
    ("strategy = 'best'\n", "field 'selection': unknown strategy 'best'"),
    ("strategy = 'info_gain'\n[selection.params]\ndiversity = 2\n",
     "field 'selection': strategy 'info_gain': params.diversity: Input should be less than or equal to 1"),
    ("strategy = 'adept'\n[selection.params]\nwieght = 2\n",
     "field 'selection': strategy 'adept': params.wieght: Extra inputs are not permitted"),
    ("strategy = 'adept'\n[selection.params]\nweight = inf\n", "params.weight: Input should be a finite number"),
    ("strategy = 'synthesis'\n[selection.params]\nlearning_rate = inf\n", "params.learning_rate"),
    ("strategy = 'synthesis'\n[selection.params]\nblur_sigma = 1e300\n", "params.blur_sigma"),
    ("strategy = 'synthesis'\n[selection.params]\njitter = 1000000\n", "params.jitter"),
    ("strategy = 'variance_reduction'\n[selection.params]\nsample = 1000000000\n", "params.sample"),
    ("strategy = 'validation'\n[selection.params]\nneuron = 'a'\nbudget = 1e300\n", "params.budget"),
])
def test_strategy_settings_are_checked(tmp_path, selection, message):
    protocol = _protocol(tmp_path, f"[selection]\n{selection}")
    text = _refused(check_strategy, protocol, match=message)
    assert text.startswith(f"protocol file {tmp_path / 'protocol.toml'}: field 'selection': ")
    _refused(check_session, protocol, load_rig(ROOT / "rigs" / "sim.toml"), match=message)


def test_a_part_strategy_is_checked_too(tmp_path):
    protocol = _protocol(tmp_path, "[selection]\nstrategy = 'propose'\n[selection.params]\nneuron = 'dot'\n"
                                   "learn = 'adept'\nlearn_params = { weight = nan }\n")
    _refused(check_protocol, protocol, match="params.learn_params.weight: Input should be a finite number")


@pytest.mark.parametrize("neuron, message", [
    ("kind = 'dot'\nwidth = 2\n", "no parameter 'width'"),
    ("kind = 'dot'\nradius = -0.1\n", "'dot' neuron's radius: Input should be greater than or equal to"),
    ("kind = 'curvature'\nradius = inf\n", "'curvature' neuron's radius: Input should be a finite number"),
    ("kind = 'orientation'\nfrequency = 0\n", "'orientation' neuron's frequency"),
    ("kind = 'orientation'\norientation = nan\n", "'orientation' neuron's orientation"),
    ("kind = 'dot'\nrf = 0\n", "'dot' neuron's rf"),
    ("kind = 'dot'\nx = 1e300\n", "'dot' neuron's x"),
    ("kind = 'onnx'\npath = 'm.onnx'\noutput = 'spikes'\n", "output must be 'rate' or 'drive'"),
])
def test_neuron_parameters_are_checked(tmp_path, neuron, message):
    rig = _simulated_rig(tmp_path, neuron)
    text = _refused(check_rig, rig, match=message)
    assert text.startswith(f"rig file {tmp_path / 'rig.toml'}: field 'simulation.neurons.1': ")


def test_checked_neurons_drive_finitely(tmp_path):
    """Parameters at the edges of their ranges give finite drives: the simulator's first image works."""
    import numpy as np

    from closedloop.simulate.neurons import PIXEL, CurvatureUnit, DotUnit, OrientationUnit

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    units = [CurvatureUnit("c", radius=PIXEL, length=0, x=0.5, y=-0.5, rf=PIXEL),
             CurvatureUnit("c", radius=0.25, length=10, orientation=-360, rf=1),
             DotUnit("d", radius=PIXEL), DotUnit("d", radius=0.5),
             OrientationUnit("o", frequency=0.5), OrientationUnit("o", frequency=32, orientation=360)]
    for unit in units:
        assert np.isfinite(unit.drive(images)).all()


@pytest.mark.parametrize("display, stimulus, message", [
    ("size_cm = [1000, 30]\n", "size_deg = 1.0\n", "smaller than 8 px"),  # was shown at 1x1 px
    ("", "size_deg = 0.2\n", "smaller than 8 px"),
    ("", "size_deg = 20\nposition_deg = [15, 0]\n", "does not fit the rig's 800x600 px screen"),
])
def test_the_image_patch_must_show(tmp_path, display, stimulus, message):
    rig = _simulated_rig(tmp_path, "kind = 'dot'\n", display=display)
    protocol = _protocol(tmp_path, f"[stimulus]\n{stimulus}")
    text = _refused(check_session, protocol, rig, match=message)
    assert text.startswith(f"protocol file {protocol.source}: field 'stimulus': ") and str(rig.source) in text


def test_a_pool_too_large_for_memory_is_refused(tmp_path):
    rig = _simulated_rig(tmp_path, "kind = 'dot'\n")
    protocol = _protocol(tmp_path, "[stimulus]\nsize_deg = 20\n",  # 400 px a side
                         "[protocol]\nname = 'x'\n[pool]\nfamilies = { dot = 19000 }\n")
    _refused(check_session, protocol, rig, match="field 'pool': 19000 images of .* GiB, more than the 4 GiB")


@pytest.mark.parametrize("pool, heldout, message", [
    ("{ dot = 10 }", 10, "field 'heldout.images': 10 held-out images leave fewer candidates"),
    ("{ dot = 0 }", 3, "field 'pool.families': the pool is empty"),
    ("{ faces = 10 }", 3, "field 'pool.families.faces'"),
])
def test_the_pool_must_leave_candidates(tmp_path, pool, heldout, message):
    protocol = _protocol(tmp_path, f"[heldout]\nimages = {heldout}\n",
                         f"[protocol]\nname = 'x'\n[pool]\nfamilies = {pool}\n")
    _refused(check_session, protocol, load_rig(ROOT / "rigs" / "sim.toml"), match=message)


@pytest.mark.parametrize("entries, message", [
    ("[[entry]]\nfamily = 'dot'\ncount = 1000000000\n", "count: Input should be less than or equal to 20000"),
    ("[[entry]]\nfamily = 'dot'\ncount = 15000\n[[entry]]\nfamily = 'grating'\ncount = 15000\n",
     "entry 2 \\(grating\\): the set reaches 30000 images here; a pool holds at most 20000"),
    ("[[entry]]\nfamily = 'dot'\ncount = 12000\ngaudy = 'both'\n", "entry 1 \\(dot\\): the set reaches 24000"),
    ("[[entry]]\nfamily = 'contour'\nvariants = { params = { shape = 3 }, element = 0, curvature = "
     + str([i / 1000 for i in range(1000)]) + ", size = " + str([0.1 + i / 5000 for i in range(1000)]) + " }\n",
     "the set reaches 1000000 images"),
])
def test_huge_stimulus_sets_are_refused_at_once(tmp_path, entries, message):
    (tmp_path / "set.toml").write_text(f"[set]\nname = 'big'\n{entries}")
    protocol = _protocol(tmp_path, "", "[protocol]\nname = 'x'\n[pool]\nset = 'set.toml'\n")
    start = time.monotonic()
    text = _refused(check_protocol, protocol, match=message)
    assert time.monotonic() - start < 60  # refused before anything is listed or rendered (that would take hours)
    assert text.startswith(f"protocol file {protocol.source}: field 'pool.set': stimulus set ")


def test_a_missing_stimulus_set_is_named(tmp_path):
    protocol = _protocol(tmp_path, "", "[protocol]\nname = 'x'\n[pool]\nset = 'nope.toml'\n")
    _refused(check_protocol, protocol, match="field 'pool.set': stimulus set .*nope.toml: not found")
