"""Simulated neurons: the built-in units are tuned as documented; rates are calibrated as documented."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from closedloop.config import NeuronSpec, SimulationSpec, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.checks import check_rig
from closedloop.simulate.neurons import (
    CurvatureUnit, DotUnit, OrientationUnit, Population, build_neurons, check_params, neuron_names,
)
from closedloop.stimuli import generate_pool
from closedloop.stimuli.registry import FAMILIES

SIZE = 112


def render(family: str, **params) -> np.ndarray:
    return FAMILIES[family].render(params, SIZE)[None]


def drive(unit, image) -> float:
    return float(unit.drive(image)[0, 0])


def test_curvature_unit_prefers_a_protrusion_in_its_direction():
    unit = CurvatureUnit("c", orientation=90.0)
    drop = dict(shape=15, size=0.35, fill=True, contrast=-1.0)  # one sharp point, at 90 degrees unrotated
    up = drive(unit, render("contour", rotation=0, **drop))
    sideways = drive(unit, render("contour", rotation=270, **drop))
    dot = drive(unit, render("dot", positions=[[0.0, 0.0]], diameter=0.08, polarity="dark"))  # the tip's size
    assert up > 2 * sideways and up > 2 * dot


def test_template_matching_is_a_correlation():
    """A template peaked at offset q finds a map's peak at p when map[p + q] is bright."""
    from closedloop.simulate.neurons import GRID, _match, _offsets

    image = np.zeros((1, GRID, GRID))
    image[0, 32, 40] = 1.0
    u, v = _offsets()
    right_and_up = np.isclose(u, 8 / GRID) & np.isclose(v, 4 / GRID)  # 8 px right, 4 px up
    (match,) = _match(image, right_and_up.astype(float))
    assert np.unravel_index(np.argmax(match[0]), match[0].shape) == (36, 32)


def test_dot_unit_prefers_a_disc_of_its_size():
    unit = DotUnit("d", radius=0.05)
    matched = drive(unit, render("dot", positions=[[0.1, 0.0]], diameter=0.1))
    large = drive(unit, render("dot", positions=[[0.1, 0.0]], diameter=0.5))
    outside = drive(unit, render("dot", positions=[[0.45, 0.45]], diameter=0.1))  # beyond the field
    assert matched > 1.5 * large and matched > 10 * max(outside, 1e-6)


def test_orientation_unit_is_tuned():
    unit = OrientationUnit("o", orientation=45.0, frequency=4.0)
    grating = dict(frequency=4.0, phase=0.0, contrast=1.0, radius=0.45, colour=[1, 1, 1])
    curve = [drive(unit, render("grating", orientation=float(o), **grating)) for o in range(0, 180, 15)]
    assert int(np.argmax(curve)) == 3  # 45 degrees
    assert curve[3] > 10 * curve[9]  # orthogonal, 135 degrees


def _sim(**kwargs) -> SimulationSpec:
    neurons = kwargs.pop("neurons", [NeuronSpec(kind="curvature"), NeuronSpec(kind="dot"),
                                     NeuronSpec(kind="orientation")])
    return SimulationSpec(neurons=neurons, **kwargs)


@pytest.fixture(scope="module")
def pool():
    return generate_pool({"contour": 60, "dot": 40, "grating": 40, "texture": 40}, 64, seed=3)


def test_rates_are_calibrated_to_the_mean_rate(pool):
    sim = _sim(mean_rate=20.0, gain=0.5, max_rate=1000, calibration_images=len(pool))
    population = Population(build_neurons(sim), sim, pool.images)
    rates = population.rates(pool.images)
    assert rates.shape == (len(pool), 3) and population.names == ["curvature", "dot", "orientation"]
    np.testing.assert_allclose(rates.mean(axis=0), 20.0, rtol=1e-9)
    # rate = mean_rate * exp(gain z) / norm: log-rates are affine in the model output.
    drive = build_neurons(sim)[2].drive(pool.images)[:, 0]
    assert np.corrcoef(np.log(rates[:, 2]), drive)[0, 1] > 0.999999


def test_rates_are_capped_and_reproducible(pool):
    sim = _sim(max_rate=30.0, gain=2.0, calibration_images=50, seed=4)
    a = Population(build_neurons(sim), sim, pool.images).rates(pool.images)
    b = Population(build_neurons(sim), sim, pool.images).rates(pool.images)
    assert a.max() == 30.0 and np.array_equal(a, b)
    other = Population(build_neurons(sim), sim.model_copy(update={"seed": 5}), pool.images)
    assert not np.array_equal(other.rates(pool.images), a)  # another calibration draw


def test_names_are_unique():
    sim = _sim(neurons=[NeuronSpec(kind="dot"), NeuronSpec(kind="dot"), NeuronSpec(kind="dot", name="mine")])
    assert neuron_names(sim) == ["dot", "dot_2", "mine"]


def _mean_colour_model(path, channels_first: bool = False) -> None:
    """An ONNX model: each image's mean red, green and blue (three 'neurons')."""
    shape = ["batch", 3, "h", "w"] if channels_first else ["batch", "h", "w", 3]
    axes = [2, 3] if channels_first else [1, 2]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["rates"], axes=axes, keepdims=0)],
        "mean_colour",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("rates", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


@pytest.mark.parametrize("channels_first", [False, True])
def test_onnx_neurons(tmp_path, pool, channels_first):
    _mean_colour_model(tmp_path / "m.onnx", channels_first)
    sim = _sim(neurons=[NeuronSpec(kind="onnx", path=tmp_path / "m.onnx", name="rgb")], max_rate=1000)
    assert neuron_names(sim) == ["rgb_0", "rgb_1", "rgb_2"]
    rates = Population(build_neurons(sim), sim, pool.images).rates(pool.images[:10])
    # output = "rate" (the default): the model's outputs are the rates, in spikes/s.
    np.testing.assert_allclose(rates, pool.images[:10].mean(axis=(1, 2)), rtol=1e-4)
    as_drive = _sim(neurons=[NeuronSpec(kind="onnx", path=tmp_path / "m.onnx", output="drive")],
                    calibration_images=len(pool), gain=0.5, max_rate=1000)  # the cap never bites
    np.testing.assert_allclose(Population(build_neurons(as_drive), as_drive, pool.images)
                               .rates(pool.images).mean(axis=0), as_drive.mean_rate)


def test_unreadable_onnx_is_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    sim = _sim(neurons=[NeuronSpec(kind="onnx", path=tmp_path / "bad.onnx")])
    with pytest.raises(ClosedLoopError, match="onnx model .*bad.onnx: unreadable") as info:
        build_neurons(sim)
    assert "\n" not in str(info.value)


def test_rig_checks_refuse_unknown_neuron_parameters(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text("[rig]\nname = 'r'\nsimulated = true\n[simulation]\n"
                    "[[simulation.neurons]]\nkind = 'dot'\nradius = 0.1\nwidth = 2\n")
    with pytest.raises(ClosedLoopError, match="field 'simulation.neurons.0'.*no parameter 'width'"):
        check_rig(load_rig(path))
    path.write_text(path.read_text().replace("width = 2\n", ""))
    check_rig(load_rig(path))
    assert load_rig(path).simulation.neurons[0].model_extra == {"radius": 0.1}


@pytest.mark.parametrize("kind, params, field", [
    ("dot", {"radius": -0.1}, "radius"), ("curvature", {"radius": 0.0}, "radius"),
    ("orientation", {"frequency": 0.0}, "frequency"), ("orientation", {"frequency": float("inf")}, "frequency"),
    ("dot", {"rf": 0.0}, "rf"), ("dot", {"x": float("nan")}, "x"), ("curvature", {"length": 1e300}, "length"),
])
def test_out_of_range_parameters_are_refused(kind, params, field):
    """Each of these crashed the simulator at its first image."""
    with pytest.raises(ValueError, match=f"a '{kind}' neuron's {field}: "):
        check_params(NeuronSpec(kind=kind, **params))


def test_compact_neurons_from_a_folder(shared_v4, pool):
    folder = shared_v4 / "compact_models"
    sim = _sim(neurons=[NeuronSpec(kind="compact", path=folder, limit=3)], gain=0.5)
    assert neuron_names(sim) == ["190923_n0", "190923_n1", "190923_n2"]
    rates = Population(build_neurons(sim), sim, pool.images).rates(pool.images)
    assert rates.shape == (len(pool), 3) and np.all(rates > 0)
    assert np.all(rates.std(axis=0) > 1.0)  # the twins are driven differently by different images
