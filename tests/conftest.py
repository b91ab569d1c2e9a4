import os

# 8 simulated devices; on a loaded machine a device thread may reach a collective later
# than XLA:CPU's default 40 s abort timeout, and a real hang still ends in 3 minutes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=180")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
