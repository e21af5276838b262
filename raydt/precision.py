"""Which numeric precision and optimizer kernels a device gets, decided in one place for
fine-tuning (:mod:`raydt.train.loop`) and pre-training (:mod:`raydt.pretrain.loop`)."""

from __future__ import annotations

from typing import Any


def optimizer_options(device_type: str) -> dict[str, Any]:
    """AdamW's implementation by device: on GPUs the fused kernel (one launch for all
    parameters); on CPUs PyTorch's default (foreach)."""
    return {"fused": True} if device_type == "cuda" else {}


def use_bf16(precision: str, device_type: str, capability: tuple[int, int] | None = None,
             cpu_bf16: bool | None = None) -> bool:
    """Whether ``train.precision`` means bf16 autocast on this device. ``auto``: where the
    hardware computes bf16 natively: GPUs of compute capability 8.0 and up (A100, A10G, L4,
    H100; T4 and V100 emulate it, slower than fp32), and CPUs with AVX512-BF16 or AMX
    (``cpu_bf16``; default: this machine's, :func:`cpu_has_native_bf16`). ``bf16`` forces
    it, ``fp32`` never uses it."""
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    if device_type == "cpu":
        return cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    return device_type == "cuda" and capability is not None and capability >= (8, 0)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), read from the kernel's
    CPU flags; False where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


COMPILE_WINS_UP_TO: int | None = None
"""On CUDA, ``train.compile: auto`` compiles the training forward with CUDA graphs (mode
reduce-overhead) for models of at most this many parameters: the launch-bound sizes (the
DT size, ~1M, and 3m) where ``bench/gpu_check.sh`` measured compiled steps at least 1.1×
as fast as eager ones (``python -m bench.gpu_tables`` prints the value a GPU run supports).
None until a GPU has measured it, and auto stays eager."""


def compile_mode(setting: bool | str, device_type: str, n_params: int,
                 wins_up_to: int | None = COMPILE_WINS_UP_TO, world_size: int = 1) -> tuple[str | None, str]:
    """torch.compile's mode for ``train.compile`` (None: eager) and why, in a few words.

    ``auto``: eager on CPUs (measured on a 2-core machine: 1000 steps of the DT size took
    190 s compiled vs 115 s eager in bf16, 230 s vs 159 s in fp32); on CUDA, CUDA graphs
    for models up to ``wins_up_to`` parameters. ``true``/``default``: torch.compile's default
    mode; ``reduce-overhead``: CUDA graphs (on a CPU it is the default mode); ``false``: eager.
    ``auto`` leaves multi-worker (DDP) runs eager: what was measured is one worker."""
    if setting is False:
        return None, "eager"
    if setting is True or setting == "default":
        return "default", "compiled (mode default)"
    if setting == "reduce-overhead":
        return "reduce-overhead", "compiled (mode reduce-overhead" + (", CUDA graphs)" if device_type == "cuda" else ")")
    if device_type != "cuda":
        return None, "eager (compiled steps measured slower on CPUs)"
    if wins_up_to is None:
        return None, "eager (no GPU measurement yet: bench/gpu_check.sh measures where compiling wins)"
    if world_size > 1:  # measured on one GPU; DDP's gradient hooks were not part of it
        return None, "eager (compiling was measured for one worker, not for DDP)"
    if n_params <= wins_up_to:
        return "reduce-overhead", f"CUDA graphs ({n_params:,} parameters ≤ {wins_up_to:,}, where compiling was measured to win)"
    return None, f"eager ({n_params:,} parameters > {wins_up_to:,}, where compiling was measured to win)"


def free_bytes(device: Any) -> int:
    """Memory free now on ``device``: the GPU's free memory on CUDA, else the host's available RAM."""
    if getattr(device, "type", device) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def require_free(need: int, device: Any, setting: str, holds: str, fix: str, available: int | None = None) -> None:
    """Refuse, in one line naming ``setting`` and ``fix``, a run whose ``need`` bytes (a lower
    bound: what ``holds`` alone takes) exceed the memory free on ``device`` (``available``
    stands in for it in tests): before the allocation traceback or the OOM killer."""
    from raydt.errors import ConfigError

    available = free_bytes(device) if available is None else available
    if need > available:
        raise ConfigError(f"{setting} needs more than {need / 2**30:.1f} GiB for {holds}, and "
                          f"{getattr(device, 'type', device)} has {available / 2**30:.1f} GiB free; {fix}")
