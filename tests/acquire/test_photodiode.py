"""Photodiode onset correction over real LSL: light changes found in the trace or taken from events,
then matched to flips by the response aligner as the live loop wires them."""

import threading

import numpy as np
import pylsl
import pytest

from closedloop.acquire.photodiode import PhotodiodeInlet
from closedloop.align.windows import ResponseAligner
from closedloop.config import PhotodiodeSpec


class _Lights:
    """Collects the light changes an inlet hands on; ``wait(n)`` returns once ``n`` have come."""

    def __init__(self, then=None):
        self.times: list[float] = []
        self._then = then
        self._arrived = threading.Condition()

    def __call__(self, light: float) -> None:
        if self._then is not None:
            self._then(light)
        with self._arrived:
            self.times.append(light)
            self._arrived.notify_all()

    def wait(self, n: int, timeout: float = 10.0) -> None:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.times) >= n, timeout), \
                f"{n} light changes expected, {len(self.times)} came"


def _open(info: pylsl.StreamInfo, spec: PhotodiodeSpec, on_light):
    """An outlet described by ``info``, and a started photodiode inlet on it that calls ``on_light``."""
    outlet = pylsl.StreamOutlet(info)
    found = pylsl.resolve_byprop("name", spec.name, timeout=10)
    assert found, f"photodiode stream {spec.name!r} not found"
    inlet = PhotodiodeInlet(found[0], spec, on_light)
    inlet.start()
    return outlet, inlet


RATE = 1000.0  # samples/s of the analog trace
RISE = 0.003  # s: the light ramps linearly from 0 to 1 in this time, then stays on
LIT = 0.02  # s on before it ramps down (a fall, which is no light change)


def _trace(t: np.ndarray, starts: list[float]) -> np.ndarray:
    """A photodiode trace at times ``t`` (s): a linear ramp up at each start, on, then a ramp down."""
    trace = np.zeros_like(t)
    for start in starts:
        up = np.clip((t - start) / RISE, 0.0, 1.0)
        down = np.clip((t - start - LIT) / RISE, 0.0, 1.0)
        trace = np.maximum(trace, up - down)
    return trace


def test_analog_light_changes_are_interpolated_and_found_across_chunks(stream_name, wait_until):
    """The 0.5 crossings fall between samples (0.2, 0.8 and 0.6 of a sample after one): the onset is
    the interpolated time, to a microsecond, not a sample; the second lies between the last sample of
    one pulled chunk and the first of the next."""
    spec = PhotodiodeSpec(name=stream_name, type="Photodiode", format="analog", threshold=0.5)
    info = pylsl.StreamInfo(stream_name, "Photodiode", 1, RATE, pylsl.cf_double64, stream_name)
    lights = _Lights()
    outlet, inlet = _open(info, spec, lights)
    try:
        t = pylsl.local_clock() - 1.0 + np.arange(150) / RATE
        starts = [t[0] + 0.0107, t[0] + 0.0503, t[0] + 0.0901]  # s: each ramp begins between samples
        crossings = np.array(starts) + RISE / 2  # s: where a ramp passes 0.5
        trace = _trace(t, starts)
        split = 52  # chunk 1 ends at sample 51, below 0.5 on the second ramp; chunk 2 goes on
        assert trace[split - 1] < 0.5 <= trace[split]
        outlet.push_chunk(trace[:split, None], t[:split])
        wait_until(lambda: inlet.covered_until >= t[split - 1] + inlet.offset - 1e-9, "chunk 1 not pulled")
        assert lights.times == pytest.approx([crossings[0] + inlet.offset], abs=1e-6)
        outlet.push_chunk(trace[split:, None], t[split:])
        lights.wait(3)
        wait_until(lambda: inlet.covered_until >= t[-1] + inlet.offset - 1e-9, "chunk 2 not pulled")
    finally:
        inlet.stop()
    np.testing.assert_allclose(lights.times, crossings + inlet.offset, rtol=0, atol=1e-6)
    assert inlet.changes == 3  # the ramps down are no light changes
    assert inlet.error is None


def test_events_move_each_onset_to_its_first_light_within_max_delay(stream_name, wait_until):
    """A photodiode that sends one sample per light change, into the aligner as the loop wires it
    (light window = ``max_delay``). Flips 0.2 s apart; per flip, the light (s after the flip):

    0: 0.012 -> moved; 1: none -> missed; 2: 0.035, later than max_delay -> missed, the light unused;
    3: 0.008 and 0.020 -> moved to the first; 4: 0.028 -> moved; 5: 0.010, arriving before its flip is
    registered, in a chunk of its own -> moved; 6: none, the last flip -> missed, and still completed
    once the photodiode stream has covered its max_delay.
    """
    spec = PhotodiodeSpec(name=stream_name, type="Photodiode", format="events", max_delay=0.03)
    aligner = ResponseAligner([(1, 1)], start=0.0, end=0.1, light_window=spec.max_delay)
    info = pylsl.StreamInfo(stream_name, "Photodiode", 1, pylsl.IRREGULAR_RATE, pylsl.cf_int32, stream_name)
    lights = _Lights(then=aligner.add_light)
    outlet, inlet = _open(info, spec, lights)
    flips = pylsl.local_clock() - 5.0 + 0.2 * np.arange(7)
    after = {0: [0.012], 2: [0.035], 3: [0.008, 0.020], 4: [0.028], 5: [0.010]}
    sent = {k: [flips[k] + d for d in delays] for k, delays in after.items()}
    try:
        for k in range(5):
            aligner.add_onset(k, flips[k], {"k": k})
        # one spike 0.105 s after flip 0: inside the corrected window of onset 0, outside the flip's
        aligner.add_spikes(np.array([flips[0] + 0.105]), np.array([1]), np.array([1]))
        for chunk in ([0, 1, 2], [3, 4], [5]):
            stamps = [t for k in chunk for t in sent.get(k, [])]
            outlet.push_chunk([[1]] * len(stamps), stamps)
            lights.wait(sum(len(sent.get(k, [])) for k in range(chunk[-1] + 1)))
        aligner.add_onset(5, flips[5], {"k": 5})
        aligner.add_onset(6, flips[6], {"k": 6})
        # The loop completes an onset once the photodiode has covered max_delay after its flip.
        wait_until(lambda: inlet.covered_until - spec.max_delay > flips[6],
                    "the photodiode stream never covered the last flip's max_delay")
        responses = aligner.complete(np.inf, settled=inlet.covered_until - spec.max_delay)
    finally:
        inlet.stop()
    assert inlet.error is None
    lights_seen = [t + inlet.offset for k in sorted(sent) for t in sent[k]]
    assert lights.times == pytest.approx(lights_seen, abs=1e-9)  # every event, on this machine's clock
    assert [r.index for r in responses] == list(range(7))
    moved = {0: sent[0][0], 3: sent[3][0], 4: sent[4][0], 5: sent[5][0]}
    for r in responses:
        if r.index in moved:
            light = moved[r.index] + inlet.offset
            assert r.onset == pytest.approx(light, abs=1e-9)
            assert r.info["flip"] == flips[r.index]
            assert r.info["photodiode_correction"] == pytest.approx(light - flips[r.index], abs=1e-9)
        else:  # a miss keeps its flip, unmarked (the loop logs it as photodiode_missed)
            assert r.onset == flips[r.index] and r.info == {"k": r.index}
    assert [r.counts.tolist() for r in responses] == [[1]] + [[0]] * 6
