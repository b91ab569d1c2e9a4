"""hybridnet.distributed and `hybridnet launch`: processes wired to one coordinator,
failures that end the run quickly and name the process."""
import os
import subprocess
import sys
import time

import pytest

from hybridnet import distributed
from hybridnet.distributed import launcher

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "distributed_hello.py")


def run_launch(*args, timeout=120):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hybridnet.cli", "launch", *args],
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def test_detect_cluster_from_the_environment():
    assert distributed.detect_cluster({}) is None
    assert distributed.detect_cluster({"OMPI_COMM_WORLD_SIZE": "4"}) == "mpi"
    assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
    assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    env = launcher.process_env(1, 2, "127.0.0.1:1234", 3, base={"XLA_FLAGS": "--foo"})
    assert distributed.detect_cluster(env) == "hybridnet"
    assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=3"
    assert env[distributed.ENV_PROCESS_ID] == "1"


def test_initialize_alone_is_a_no_op_and_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(distributed, "_STATE", {"initialized": False, "how": None})
    for key in ("HYBRIDNET_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                "PMIX_RANK", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.initialize() is False
    assert distributed.process_count() == 1 and distributed.is_chief()
    with pytest.raises(RuntimeError, match="already called"):
        distributed.initialize()
    monkeypatch.setattr(distributed, "_STATE", {"initialized": False, "how": None})
    with pytest.raises(ValueError, match="num_processes=2 needs a coordinator_address"):
        distributed.initialize(num_processes=2)


def test_launch_runs_one_job_over_every_process():
    proc, _ = run_launch("-n", "2", "--devices-per-process", "2", SCRIPT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "rank=" in ln]
    # 2 processes x 2 devices, each device holding ones * (rank + 1): 2*2*1 + 2*2*2 = 12
    assert sorted(lines) == [f"[{r}] rank={r} count=2 devices=4 sum=12.0" for r in (0, 1)]


@pytest.mark.parametrize("ending,reason", [("raise", "exit status 1"), ("kill", "signal 9")])
def test_a_failed_process_ends_the_run_and_is_named(ending, reason):
    proc, seconds = run_launch("-n", "2", "--devices-per-process", "1", SCRIPT, ending)
    assert proc.returncode != 0
    assert f"process 1 failed ({reason})" in proc.stdout
    assert "failing on purpose" in proc.stdout or ending == "kill"
    assert seconds < 60


def test_launch_bad_arguments():
    proc, _ = run_launch("-n", "2", "no_such_script.py")
    assert proc.returncode == 2 and "no such script" in proc.stderr
    with pytest.raises(ValueError, match="-n must be a positive int"):
        launcher.launch([sys.executable, SCRIPT], 0)
