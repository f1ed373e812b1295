"""A one-node Ray cluster on loopback for the Ray tests (test_ray_executor, test_ray_search): `ray start --head`
with a given number of CPUs, started and stopped by the test module; this process connects to it as a driver,
and a `worker --executor ray --address` or `search --executor ray --address` process can too. Skips without Ray."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus: int) -> Iterator[str]:
    """The cluster's address while it runs; the test process is connected to it as a driver meanwhile."""
    ray = pytest.importorskip("ray")
    from ray._common.utils import get_ray_address_file
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                             "--ray-client-server-port", str(free_port()), "--num-cpus", str(num_cpus),
                             "--include-dashboard", "false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        yield address
    finally:
        ray.shutdown()
        head.terminate()                # --block: the head's processes end with it
        head.wait(timeout=60)
        # `ray start` wrote its address (this machine's IP, our port) for later plain ray.init() calls on this
        # machine: gone with the head.
        current = Path(get_ray_address_file(None))
        if current.is_file() and current.read_text().strip().endswith(address[address.rindex(":"):]):
            current.unlink()
