"""A live session on the simulated rig whose neurons are V4 twins, learned by a core from other
compact models: the learner knows V4 before the first trial and learns the twins online."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from closedloop.config import load_protocol, load_rig
from closedloop.session import run_session
from closedloop.record import read_session

PRESENTATIONS = 240
# The twins are the first two published models of session 190923; the core is layer 4 of four models
# of session 201025 (other neurons, another session), so the learner starts from V4-like features but
# never from the twins themselves; the pool is natural images of session 201025. After about 170 trained-on responses the held-out r
# against the twins' true rates (40 held-out images) must pass R_TRUE on average over the twins: the
# readouts of four models' features learn them to r 0.4-0.75 in this many trials (tests/learn/test_learner.py;
# one twin came out at 0.18 once in CI, so one twin alone is not held to it), while a learner that
# learned nothing scores about 0 (r over 40 images spreads by 0.16, the mean of two by 0.11).
R_TRUE = 0.3
POOL = 240  # natural images of session 201025


@pytest.fixture(scope="module")
def session(tmp_path_factory, shared_v4):
    tmp = tmp_path_factory.mktemp("loop-v4")
    name = f"cltest-v4-{uuid.uuid4().hex[:8]}"
    models = shared_v4 / "compact_models"
    (tmp / "rig.toml").write_text(f"""
[rig]
name = "test-sim-v4"
simulated = true
[display]
backend = "headless"
[markers]
name = "{name}-markers"
type = "Markers"
[spikes]
name = "{name}-spikes"
type = "Spikes"
[simulation]
seed = 3
mean_rate = 60.0
[[simulation.neurons]]
kind = "compact"
path = "{models}"
limit = 2
""")
    (tmp / "set.toml").write_text(f"""
[set]
name = "natural-201025"
[[entry]]
natural = "{shared_v4 / 'sessions' / 'images_201025.zip'}"
count = {POOL}
""")
    (tmp / "protocol.toml").write_text(f"""
[protocol]
name = "v4-twins"
seed = 1
presentations = {PRESENTATIONS}
on_frames = 4
off_frames = 2
[stimulus]
size_deg = 5.6          # 112 px on the default display: the twins' own input size
[trial]
images = 4
hold = 0.0
iti = 0.0
[pool]
set = "set.toml"
[model]
core = {{ kind = "compact", path = "{models}", match = "compact_model_201025_*", limit = 4, layer = "4", dims = 64 }}
finetune_every = 0
[selection]
strategy = "random"
warmup = 20
batch = 4
[heldout]
images = 40
every = 4
""")
    summary = run_session(load_protocol(tmp / "protocol.toml"), load_rig(tmp / "rig.toml"), tmp / "session")
    return summary, read_session(tmp / "session")


def test_a_core_from_compact_models_learns_v4_twins(session):
    summary, record = session
    assert summary["status"] == "complete" and summary["presentations"] == PRESENTATIONS
    assert summary["core"].startswith("compact: layer 4 of 4 models")
    final = record.accuracy[-1]
    assert final["responses"] >= 0.7 * PRESENTATIONS * 3 / 4  # about three in four presentations are trained on
    r_true = np.array(final["r_true"], dtype=float)
    assert r_true.shape == (2,) and r_true.mean() > R_TRUE and np.all(r_true > 0), r_true
    first = np.array(record.accuracy[0]["r_true"], dtype=float)
    assert np.nanmean(r_true) > np.nanmean(first)  # and it learned during the session
