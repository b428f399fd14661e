"""Starting or joining Ray: a local Ray described in one line; a cluster that is not there, or an
address that is not one, is one line naming the address, at once (not after Ray's own retries)."""

import socket
import subprocess
import sys

import pytest

from closedloop.cluster import describe


def _connect(address: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom closedloop.cluster import connect\nfrom closedloop.errors import ClosedLoopError\n"
            f"try:\n    print(connect({address!r}))\nexcept ClosedLoopError as exc:\n"
            "    print(exc)\n    sys.exit(2)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_local_ray_is_named_with_its_version_and_cpus(ray_local):
    import ray

    assert ray_local.startswith(f"Ray {ray.__version__}, local, ")
    assert "2 CPUs" in ray_local and describe() == ray_local


def _closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_unreachable_cluster_is_one_line_naming_it(scheme):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    done = _connect(address)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip().splitlines() == [f"Ray cluster {address}: cannot connect (Connection refused)"]


def test_an_address_that_is_not_one_is_refused():
    done = _connect("head-node")
    assert done.returncode == 2
    assert "Ray cluster head-node: not 'auto', HOST:PORT or ray://HOST:PORT" in done.stdout
