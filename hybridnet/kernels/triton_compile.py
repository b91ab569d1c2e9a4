"""Compile the GPU (Triton) kernels for an NVIDIA GPU on any machine, and
report what each uses: registers, spills, shared memory.

Cross-lowering (``lower(lowering_platforms=("cuda",))``) checks that a
kernel lowers to Triton IR, but the limits that break it on hardware
(shared memory per block, registers, spills) appear only when Triton
compiles that IR to a cubin, inside XLA:GPU. :func:`compile_gpu_kernels`
does that step here: it cross-lowers ``fn``, captures the Triton IR of every
``pallas_call``, compiles it with the ``triton`` package for the target
(default sm_90: H100/H200) down to a cubin, and reads registers, spills and
shared memory from ``ptxas -v`` (the ptxas that ships with the package). No
GPU or CUDA install is needed.

XLA:GPU compiles the same IR with the Triton it bundles, not the ``triton``
package, so the figures are those of the package's version (pinned in the
``test`` extra); they are a close check, not the hardware's last word.

Example:
    >>> from hybridnet.kernels import lstm, default_lstm_block_sizes
    >>> S = jax.ShapeDtypeStruct
    >>> f = lambda x, k, r, b: lstm(x, k, r, b, backend="gpu", interpret=False)
    >>> for kern in compile_gpu_kernels(f, S((128, 50, 1024), jnp.bfloat16),
    ...                                 ...):
    ...     print(kern.name, kern.registers, kern.shared_bytes, kern.fits)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile

import jax

from . import _common as C

__all__ = ["CompiledKernel", "compile_gpu_kernels", "MAX_REGISTERS",
           "SPILL_TOLERANCE_BYTES"]

MAX_REGISTERS = 255  # per thread, every NVIDIA GPU since Kepler
# A few bytes of spill stores per thread (a scalar or two kept in L1) come
# and go with ptxas flags and versions; hundreds, at 255 registers, are the
# configurations to avoid.
SPILL_TOLERANCE_BYTES = 16

_CALL = re.compile(r"@__gpu\$xla\.gpu\.triton\((.*?)operand_layouts", re.S)
_ATTR = re.compile(r'\b(grid_x|grid_y|grid_z|num_stages|num_warps) = '
                   r'(\d+) : i32|\bname = "([^"]+)"')
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                    r"(\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers[^\n]*")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    """One compiled ``pallas_call``: its launch and its resource usage."""

    name: str
    grid: tuple
    num_warps: int
    num_stages: int
    registers: int          # per thread
    shared_bytes: int       # per block: dynamic (Triton) + static
    spill_store_bytes: int  # per thread, as ptxas -v reports them
    spill_load_bytes: int
    stack_bytes: int        # per thread stack frame
    capability: int

    @property
    def spills(self) -> bool:
        return self.spill_store_bytes > 0 or self.spill_load_bytes > 0

    @property
    def fits(self) -> bool:
        """Within the per-block shared memory of a Hopper GPU, and at most
        ``SPILL_TOLERANCE_BYTES`` of spill stores."""
        return (self.shared_bytes <= C.TRITON_SMEM_LIMIT_BYTES
                and self.registers <= MAX_REGISTERS
                and self.spill_store_bytes <= SPILL_TOLERANCE_BYTES)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "spills": self.spills,
                "fits": self.fits}


@contextlib.contextmanager
def _captured_triton_modules():
    """The Triton IR text of every pallas_call lowered for GPU meanwhile."""
    from jax._src.pallas.triton import pallas_call_registration as reg
    lowering = getattr(reg, "lowering", None)
    if lowering is None or not hasattr(lowering,
                                       "lower_jaxpr_to_triton_module"):
        raise RuntimeError(
            "compile_gpu_kernels: this jax (" + jax.__version__ + ") lowers "
            "Pallas for GPU differently; expected jax._src.pallas.triton."
            "pallas_call_registration.lowering.lower_jaxpr_to_triton_module")
    modules = []
    original = lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        modules.append(result.module.operation.get_asm(
            enable_debug_info=False))
        return result

    lowering.lower_jaxpr_to_triton_module = capture
    try:
        yield modules
    finally:
        lowering.lower_jaxpr_to_triton_module = original


def _launches(hlo_text: str) -> list[dict]:
    """name, grid, num_warps, num_stages of each Triton custom call."""
    out = []
    for m in _CALL.finditer(hlo_text):
        attrs = {}
        for key, val, name in _ATTR.findall(m.group(1)):
            if name:
                attrs["name"] = name
            else:
                attrs[key] = int(val)
        out.append(attrs)
    return out


def _module_name(asm: str) -> str:
    m = re.search(r"tt\.func public @([\w$.]+)", asm)
    return m.group(1) if m else ""


def _ptxas_report(ptx: str, capability: int, tmp: str) -> dict:
    """Registers, stack frame, spills and static shared memory, as printed
    by ``ptxas -v`` for this target with its default optimisation. (The
    standalone Triton compiler adds ``--regAllocOptLevel=2``, a workaround
    for a ptxas 13 bug that makes small spills appear, e.g. 12 bytes in
    conv2d's float32 wgrad at 64 registers; XLA:GPU, which runs these
    kernels, does not pass it.)"""
    from triton.backends.nvidia import compiler as nv
    path = os.path.join(tmp, "kernel.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    cmd = [nv.get_ptxas(capability).path, "-v",
           f"--gpu-name={nv.sm_arch_from_capability(capability)}", path,
           "-o", path + ".o"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    text = run.stdout + run.stderr
    frame = _FRAME.search(text)
    regs = _REGS.search(text)
    if run.returncode or frame is None or regs is None:
        raise RuntimeError("compile_gpu_kernels: ptxas gave no resource "
                           f"report. Received: {text[-400:]!r}")
    smem = _SMEM.search(regs.group(0))
    return dict(stack_bytes=int(frame.group(1)),
                spill_store_bytes=int(frame.group(2)),
                spill_load_bytes=int(frame.group(3)),
                registers=int(regs.group(1)),
                static_shared=int(smem.group(1)) if smem else 0)


def compile_gpu_kernels(fn, *args, capability: int = 90
                        ) -> list[CompiledKernel]:
    """Compiles every Triton kernel of ``fn(*args)`` for an NVIDIA GPU of
    compute ``capability`` (90: Hopper) and returns their resource usage,
    in lowering order.

    ``fn`` must call the kernels with ``backend="gpu", interpret=False``;
    ``args`` may be ``jax.ShapeDtypeStruct``s (nothing is executed). Needs
    the ``triton`` package (``pip install -e ".[test]"``).
    """
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except ImportError as e:
        raise ImportError("compile_gpu_kernels needs the `triton` package: "
                          'pip install -e ".[test]"') from e
    jax.clear_caches()  # a cached lowering would bypass the capture
    with _captured_triton_modules() as modules:
        hlo = jax.jit(fn).trace(*args).lower(
            lowering_platforms=("cuda",)).as_text()
    by_name = collections.defaultdict(list)
    for asm in modules:
        by_name[_module_name(asm)].append(asm)
    launches = _launches(hlo)
    if sorted(a.get("name", "") for a in launches) != sorted(
            _module_name(m) for m in modules):
        raise RuntimeError(
            "compile_gpu_kernels: the captured Triton modules do not match "
            f"the lowered kernels. Received: modules "
            f"{[_module_name(m) for m in modules]}, launches "
            f"{[a.get('name') for a in launches]}")
    target = GPUTarget("cuda", capability, 32)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for launch in launches:
            asm = by_name[launch["name"]].pop(0)
            path = os.path.join(tmp, launch["name"] + ".ttir")
            with open(path, "w") as f:
                f.write(asm)
            kernel = triton.compile(path, target=target, options=dict(
                num_warps=launch["num_warps"],
                num_stages=launch["num_stages"], enable_fp_fusion=True))
            usage = _ptxas_report(kernel.asm["ptx"], capability, tmp)
            out.append(CompiledKernel(
                name=launch["name"],
                grid=(launch["grid_x"], launch["grid_y"], launch["grid_z"]),
                num_warps=launch["num_warps"],
                num_stages=launch["num_stages"],
                registers=usage["registers"],
                shared_bytes=int(kernel.metadata.shared)
                + usage["static_shared"],
                spill_store_bytes=usage["spill_store_bytes"],
                spill_load_bytes=usage["spill_load_bytes"],
                stack_bytes=usage["stack_bytes"],
                capability=capability))
    return out
