"""Run by tests/test_distributed.py under `hybridnet launch`: one global array over every
process's devices, a jitted sum, then the requested ending."""
import os
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

import hybridnet

hybridnet.distributed.initialize()
rank, count = hybridnet.distributed.process_index(), hybridnet.distributed.process_count()
mesh = jax.make_mesh((jax.device_count(),), ("data",))
local = jnp.ones((jax.local_device_count(), 2)) * (rank + 1)
total = jax.jit(jnp.sum)(jax.make_array_from_process_local_data(
    NamedSharding(mesh, P("data")), local))
print(f"rank={rank} count={count} devices={jax.device_count()} sum={float(total)}", flush=True)
ending = sys.argv[1] if len(sys.argv) > 1 else "ok"
if rank == count - 1 and ending == "raise":
    raise RuntimeError("failing on purpose")
if rank == count - 1 and ending == "kill":
    os.kill(os.getpid(), 9)
if ending != "ok":
    import time
    time.sleep(120)  # the launcher must end this process, not wait for it
