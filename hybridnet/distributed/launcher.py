"""``hybridnet launch``: N local processes wired to one coordinator.

Each process runs ``python script.py args`` with the environment
:func:`hybridnet.distributed.initialize` reads; its output lines are prefixed with its
rank. As soon as one process fails, the others are ended and the launcher exits with the
failed process's status, naming it.

Example:
    $ hybridnet launch -n 2 --devices-per-process 4 train.py --epochs 3
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from hybridnet.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(rank: int, num_processes: int, coordinator: str,
                devices_per_process: int | None, base=None) -> dict:
    """The environment of process ``rank``."""
    env = dict(os.environ if base is None else base)
    env.update({ENV_COORDINATOR: coordinator, ENV_NUM_PROCESSES: str(num_processes),
                ENV_PROCESS_ID: str(rank), "PYTHONUNBUFFERED": "1"})
    if devices_per_process is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(
            flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, b""):
        out.buffer.write(prefix.encode() + line)
        out.flush()
    stream.close()


def launch(command: Sequence[str], num_processes: int, devices_per_process: int | None = None,
           *, grace_seconds: float = 5.0, out=None) -> int:
    """Runs ``command`` (argv, e.g. ``[sys.executable, "train.py"]``) in ``num_processes``
    processes; returns 0 if all succeed, else the first failure's exit status."""
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"hybridnet launch: -n must be a positive int. "
                         f"Received: {num_processes!r}")
    if devices_per_process is not None and devices_per_process < 1:
        raise ValueError(f"hybridnet launch: --devices-per-process must be a positive int. "
                         f"Received: {devices_per_process!r}")
    out = out or sys.stdout
    coordinator = f"127.0.0.1:{free_port()}"
    procs, pumps = [], []
    for rank in range(num_processes):
        p = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=process_env(rank, num_processes, coordinator,
                                             devices_per_process),
                             start_new_session=True)
        t = threading.Thread(target=_pump, args=(p.stdout, f"[{rank}] ", out), daemon=True)
        t.start()
        procs.append(p)
        pumps.append(t)
    status = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                # A peer's death makes the others fail within moments too: name every
                # failure seen, a death by signal (the cause) first.
                time.sleep(0.5)
                seen = {r for r, _ in failed}
                failed += [(r, c) for r, c in enumerate(p.poll() for p in procs)
                           if c not in (None, 0) and r not in seen]
                failed.sort(key=lambda rc: rc[1] >= 0)
                rank, status = failed[0]
                said = "; ".join(f"process {r} failed ({_reason(c)})" for r, c in failed)
                out.write(f"hybridnet launch: {said}; ending the others.\n")
                out.flush()
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        status = 130
    finally:
        _end(procs, grace_seconds)
        for t in pumps:
            t.join(timeout=2)
    return 1 if status < 0 else status


def _reason(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit status {code}"


def _end(procs, grace_seconds: float) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
