"""Keras 3's developer guides with only the imports changed: each script under
tests/guides/ runs in a fresh interpreter (its asserts check what it computes)."""
import os
import subprocess
import sys

import pytest

GUIDES = os.path.join(os.path.dirname(__file__), "guides")
SCRIPTS = sorted(f for f in os.listdir(GUIDES) if f.endswith(".py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_guide_runs_with_imports_changed(script, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.join(GUIDES, script)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
