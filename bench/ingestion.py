"""Spike ingestion: sustained rate with zero loss, and ingestion lag.

A separate process pushes (channel, unit) spike samples on a real LSL outlet
over loopback at a fixed rate; closedloop's ``SpikeInlet`` ingests them.
Each rate is checked end to end: the number of spikes and a checksum of
their channels must match what was pushed. Lag is measured per pulled chunk
as ``local_clock()`` at receipt minus the stamp of the chunk's oldest spike.
Baseline in the same run: pylsl's default pull (Python lists), as a script
would do it.

    python bench/ingestion.py --rates 250000 500000 1000000 2000000 --seconds 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import uuid

import numpy as np
import pylsl

from closedloop.acquire.spikes import SpikeInlet
from closedloop.acquire.streams import resolve_stream, spike_stream_info
from closedloop.config import StreamSpec

CHANNELS = 384
TICK = 0.001  # s between pushed chunks


def push(name: str, rate: float, seconds: float, ready, done) -> None:
    """Push ``rate`` spikes/s for ``seconds``; report (count, channel checksum) on ``done``."""
    spec = StreamSpec(name=name, type="Spikes")
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, name), chunk_size=0, max_buffered=60)
    rng = np.random.default_rng(0)
    ready.wait()
    time.sleep(0.5)  # the inlet has subscribed
    start = pylsl.local_clock()
    sent, checksum, carry, t = 0, 0, 0.0, start
    while t - start < seconds:
        now = pylsl.local_clock()
        carry += rate * (now - t)
        n = int(carry)
        if n:
            carry -= n
            samples = np.column_stack([rng.integers(1, CHANNELS + 1, n), np.ones(n)]).astype(np.int32)
            stamps = np.linspace(t, now, n, endpoint=False)
            outlet.push_chunk(samples, stamps)
            sent += n
            checksum += int(samples[:, 0].sum())
        t = now
        time.sleep(TICK)
    done.put((sent, checksum))
    time.sleep(2.0)  # keep the outlet up while the inlet drains


def measure(rate: float, seconds: float, fast: bool) -> dict:
    name = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Queue()
    pusher = ctx.Process(target=push, args=(name, rate, seconds, ready, done))
    pusher.start()
    info = resolve_stream(StreamSpec(name=name, type="Spikes"), timeout=10.0)
    got = {"n": 0, "checksum": 0}
    lags: list[float] = []

    def on_spikes(times, channels, units):
        lags.append(pylsl.local_clock() - float(times[0]))
        got["n"] += len(times)
        got["checksum"] += int(np.asarray(channels, dtype=np.int64).sum())

    if fast:
        inlet = SpikeInlet(info, on_spikes, lambda now: None)
        inlet.start()
        ready.set()
        sent, checksum = done.get(timeout=seconds + 60)
        deadline = time.monotonic() + 5.0
        while got["n"] < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        inlet.stop()
    else:  # a script's loop: default pull_chunk, Python lists
        inlet = pylsl.StreamInlet(info, max_buflen=60)
        inlet.open_stream(timeout=5.0)
        ready.set()
        result = None
        deadline = None
        while True:
            samples, stamps = inlet.pull_chunk(timeout=0.005, max_samples=65536)
            if stamps:
                on_spikes(stamps, [s[0] for s in samples], None)
            if result is None:
                try:
                    result = done.get_nowait()
                    deadline = time.monotonic() + 5.0
                except Exception:  # queue.Empty
                    pass
            if result is not None and (got["n"] >= result[0] or time.monotonic() > deadline):
                break
        sent, checksum = result
        inlet.close_stream()
    pusher.join()
    lags_ms = np.array(lags) * 1000
    return {"rate": rate, "sent": sent, "received": got["n"],
            "lossless": got["n"] == sent and got["checksum"] == checksum,
            "lag_p50_ms": float(np.median(lags_ms)), "lag_p99_ms": float(np.percentile(lags_ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[250e3, 500e3, 1e6, 2e6],
                        help="spikes/s to try")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    for fast in (False, True):
        label = "closedloop SpikeInlet" if fast else "baseline: pylsl default pull"
        best = 0.0
        for rate in args.rates:
            r = measure(rate, args.seconds, fast)
            print(f"{label}: {rate:>11,.0f} spikes/s  received {r['received']:,}/{r['sent']:,} "
                  f"{'lossless' if r['lossless'] else 'LOSS'}  lag p50 {r['lag_p50_ms']:.2f} ms "
                  f"p99 {r['lag_p99_ms']:.2f} ms", flush=True)
            if r["lossless"]:
                best = max(best, rate)
        print(f"{label}: highest lossless rate tried {best:,.0f} spikes/s")


if __name__ == "__main__":
    main()
