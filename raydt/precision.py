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
