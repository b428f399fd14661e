"""A simulated acquisition system whose clock can be stepped while it runs.

``python -m closedloop.benchmarks.faults_outlet RIG STIMULI STEP`` serves the simulated rig
``RIG`` exactly as ``closedloop simulate`` does (:class:`~closedloop.simulate.rig.SpikeSimulator`),
but every SIGUSR1 moves its acquisition clock ``STEP`` seconds ahead and every SIGUSR2 moves it
back by as much: every stamp it sends from then on (spikes and sync events alike) carries the
step, as when acquisition software restarts its clock or the clock is set mid-session.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import numpy as np

from closedloop.config import load_rig
from closedloop.record.session import ADDED
from closedloop.simulate.rig import SpikeSimulator
from closedloop.stimuli import StimulusPool


class SteppedSimulator(SpikeSimulator):
    """A :class:`SpikeSimulator` whose acquisition clock carries ``step`` seconds more."""

    step = 0.0  # s

    def acquisition_clock(self, t: np.ndarray) -> np.ndarray:
        return super().acquisition_clock(t) + self.step


def main(rig_path: str, stimuli: str, step: str) -> None:
    """Serve until SIGTERM; SIGUSR1 / SIGUSR2 step the clock by +/- ``step`` seconds."""
    stimuli_path = Path(stimuli)
    simulator = SteppedSimulator(load_rig(Path(rig_path)), StimulusPool.load(stimuli_path),
                                 added=stimuli_path.parent / ADDED)
    stop = threading.Event()

    def move(sign: float) -> None:
        simulator.step += sign * float(step)
        print(f"clock step {simulator.step:+.3f} s", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: move(1.0))
    signal.signal(signal.SIGUSR2, lambda *_: move(-1.0))
    print(f"simulating {simulator.n} neurons", flush=True)
    simulator.run(stop)


if __name__ == "__main__":
    main(*sys.argv[1:4])
