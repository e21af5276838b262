"""Does a run fit the cluster? Checked before anything waits on Ray for resources.

Ray leaves a trainer whose workers fit no node PENDING forever; these checks turn that
into an immediate error that says what to change.
"""

from __future__ import annotations

from raydt.config import ResourcesConfig
from raydt.errors import ConfigError


def trial_capacity(res: ResourcesConfig, nodes: list[dict[str, float]], where: str) -> int:
    """How many runs of ``res`` the cluster ``nodes`` (resource dicts) holds at once (≥ 1),
    or a :class:`ConfigError` naming what does not fit."""
    cpus, gpus, workers = res.cpus_per_worker, int(res.use_gpu), res.num_workers
    need = f"{cpus} CPU" + (f" and {gpus} GPU" if gpus else "")
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise ConfigError(
            f"{where}: a worker needs {need} but no node has that much "
            f"(largest: {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower "
            "resources.cpus_per_worker, set resources.use_gpu=false, or add such nodes"
        )
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    by_cpu = int(total_cpu // (workers * cpus))
    capacity = min(by_cpu, int(total_gpu // (workers * gpus))) if gpus else by_cpu
    if capacity < 1:
        raise ConfigError(
            f"{where}: one run needs {workers} workers × {need} but the cluster has {total_cpu:g} CPU "
            f"and {total_gpu:g} GPU in all; lower resources.num_workers or resources.cpus_per_worker"
        )
    return capacity


def local_nodes() -> list[dict[str, float]]:
    """This machine as a one-node cluster (for checks made without a running Ray)."""
    import os

    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # torch builds without CUDA can raise here
        pass
    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}]
