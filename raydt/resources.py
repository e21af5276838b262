"""Does a run fit the cluster, and how many fit at once? Checked before anything waits on Ray.

A cluster is judged by what it can become, not by the nodes alive now: on an autoscaling
cluster (``ray up clusters/aws.yaml``) the GPU nodes a sweep needs usually do not exist when
it starts; the autoscaler launches them when pending trials ask for resources. So a
:class:`ClusterShape` is a list of node types, each with its resources and the most nodes
of that type the cluster may have. It comes from the autoscaler's configuration when there
is one (:func:`shape_from_autoscaler_config`), else from the nodes alive now
(:func:`shape_from_nodes`: a fixed cluster, or this machine).

Ray leaves a trainer whose workers fit no node type PENDING forever; :func:`trial_capacity`
turns that into an immediate error that says what to change. No Ray import here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from raydt.config import ResourcesConfig
from raydt.errors import ConfigError


@dataclass(frozen=True)
class NodeType:
    """One kind of node the cluster has or can launch."""

    name: str
    cpus: float
    gpus: float
    max_nodes: int
    """The most nodes of this type the cluster can have at once (the head: 1)."""
    alive: int = 0
    """Nodes of this type alive when the shape was read."""
    head: bool = False

    def describe(self) -> str:
        size = f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")
        count = "head" if self.head else f"{self.alive} up, at most {self.max_nodes}"
        return f"{self.name} ({size}; {count})"


@dataclass(frozen=True)
class ClusterShape:
    """What a cluster is or can become: its node types and a cap on launched nodes."""

    types: tuple[NodeType, ...]
    source: str
    """Where the shape was read from (an autoscaler config file, the nodes alive now, …)."""
    autoscaling: bool = False
    max_worker_nodes: int | None = None
    """The autoscaler's cap on worker nodes of all types together (its ``max_workers``)."""

    @property
    def max_cpus(self) -> float:
        return sum(t.cpus * t.max_nodes for t in self.types)

    @property
    def max_gpus(self) -> float:
        return sum(t.gpus * t.max_nodes for t in self.types)


@dataclass(frozen=True)
class Capacity:
    """How many runs of one ``resources:`` section the cluster can hold at once."""

    trials: int
    placement: str
    """Ray's placement strategy for the trial's workers (PACK, STRICT_PACK or SPREAD)."""
    per_type: tuple[tuple[str, int, int], ...]
    """(node type, trials one node of it holds, nodes of it used at most) for every type the
    runs can use; where a run's workers may spread over nodes, worker slots per node."""
    workers: int = 1

    def lines(self) -> list[str]:
        unit = "trial(s)" if self.placement == "STRICT_PACK" or self.workers == 1 else "worker(s)"
        return [f"{name}: {per} {unit} per node, up to {nodes} node(s)" for name, per, nodes in self.per_type]


def placement_strategy(res: ResourcesConfig) -> str:
    """``resources.placement`` resolved: ``auto`` keeps a multi-GPU trial on one node
    (STRICT_PACK: NCCL over NVLink/PCIe, not the network) and lets others pack loosely."""
    if res.placement != "auto":
        return res.placement.upper()
    return "STRICT_PACK" if res.use_gpu and res.num_workers > 1 else "PACK"


def trial_capacity(res: ResourcesConfig, cluster: ClusterShape | list[dict[str, float]], where: str) -> Capacity:
    """How many runs of ``res`` the cluster holds at once (≥ 1), or a :class:`ConfigError`
    naming what does not fit. ``cluster`` may be a list of node resource dicts (a fixed
    cluster)."""
    shape = cluster if isinstance(cluster, ClusterShape) else shape_from_nodes(cluster)
    cpus, gpus, workers = res.cpus_per_worker, int(res.use_gpu), res.num_workers
    placement = placement_strategy(res)
    need = f"{cpus} CPU" + (f" and {gpus} GPU" if gpus else "")

    def per_node(t: NodeType, n: int) -> int:  # how many n-worker groups one node holds
        fit = int(t.cpus // (n * cpus))
        return min(fit, int(t.gpus // (n * gpus))) if gpus else fit

    kinds = ", ".join(t.describe() for t in shape.types) or "none"
    if not any(per_node(t, 1) for t in shape.types):
        raise ConfigError(
            f"{where}: a worker needs {need} but no node type of the cluster has that much "
            f"(node types from {shape.source}: {kinds}); lower resources.cpus_per_worker, set "
            "resources.use_gpu=false, or add such a node type"
        )
    group = workers if placement == "STRICT_PACK" else 1
    if not any(per_node(t, group) for t in shape.types):
        raise ConfigError(
            f"{where}: resources.placement puts all {workers} workers × {need} of a run on one node "
            f"(STRICT_PACK) but no node type holds that many (node types from {shape.source}: {kinds}); "
            "lower resources.num_workers, add a larger node type, or set resources.placement=pack "
            "to let the workers spread over nodes"
        )
    # The cap on launched nodes goes to the types that hold the most per node first.
    usable = sorted((t for t in shape.types if per_node(t, group)), key=lambda t: -per_node(t, group))
    left = math.inf if shape.max_worker_nodes is None else shape.max_worker_nodes
    per_type, units = [], 0
    for t in usable:
        own = 1 if t.head else 0  # the head node itself is not a launched worker
        nodes = own + int(min(t.max_nodes - own, max(left, t.alive - own)))
        left -= nodes - own
        if nodes:
            per_type.append((t.name, per_node(t, group), nodes))
            units += per_node(t, group) * nodes
    trials = units if placement == "STRICT_PACK" else units // workers
    if trials < 1:
        raise ConfigError(
            f"{where}: one run needs {workers} workers × {need} but the cluster can have "
            f"{shape.max_cpus:g} CPU and {shape.max_gpus:g} GPU in all (node types from {shape.source}: "
            f"{kinds}); lower resources.num_workers or resources.cpus_per_worker"
        )
    return Capacity(trials, placement, tuple(per_type), workers)


# --------------------------------------------------------------------------------------
# Where a shape comes from


def shape_from_nodes(nodes: list[dict[str, float]], source: str = "the nodes alive now") -> ClusterShape:
    """A fixed cluster: one node type per distinct (CPU, GPU) size of ``nodes``."""
    sizes: dict[tuple[float, float], int] = {}
    for node in nodes:
        key = (float(node.get("CPU", 0)), float(node.get("GPU", 0)))
        sizes[key] = sizes.get(key, 0) + 1
    types = tuple(NodeType(f"{c:g}cpu" + (f"_{g:g}gpu" if g else ""), c, g, n, alive=n)
                  for (c, g), n in sizes.items())
    return ClusterShape(types, source)


def shape_from_autoscaler_config(config: dict[str, Any], source: str,
                                 alive: dict[str, int] | None = None) -> ClusterShape:
    """The shape a Ray autoscaler config (``ray up``'s cluster YAML, or the bootstrap copy on
    the head) lets the cluster grow to. ``alive`` counts the nodes of each type up now."""
    alive = alive or {}
    node_types = config.get("available_node_types") or {}
    if not isinstance(node_types, dict) or not node_types:
        raise ConfigError(f"{source}: no available_node_types; raydt needs the cluster's node types to plan")
    # Ray's defaults: the cluster's max_workers is 2, and a type's is the cluster's.
    cap = int(config.get("max_workers", 2))
    head_type = config.get("head_node_type")
    types = []
    for name, spec in node_types.items():
        spec = spec or {}
        res = spec.get("resources") or {}
        head = name == head_type
        # A head type can launch workers of its own type too (the local provider's one type).
        most = int(spec.get("max_workers", cap)) + (1 if head else 0)
        types.append(NodeType(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)),
                              max(most, alive.get(name, 0)), alive=alive.get(name, 0), head=head))
    return ClusterShape(tuple(types), source, autoscaling=True, max_worker_nodes=cap)


def declares_resources(config: dict[str, Any]) -> bool:
    """Whether every node type of an autoscaler config states its CPUs (the local provider
    leaves them for Ray to detect on each machine: then only the live nodes tell)."""
    node_types = config.get("available_node_types") or {}
    return bool(node_types) and all("CPU" in ((spec or {}).get("resources") or {}) for spec in node_types.values())


def shape_from_cluster_config_proto(proto: Any, source: str) -> ClusterShape:
    """The shape from the cluster config some deployments (KubeRay) report to Ray's GCS
    (``autoscaler_pb2.ClusterConfig``: node groups with resources and min/max counts)."""
    types = []
    for group in proto.node_group_configs:
        res = dict(group.resources)
        most = group.max_count if group.max_count >= 0 else 10**6  # -1: no limit
        types.append(NodeType(group.name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), int(most)))
    return ClusterShape(tuple(types), source, autoscaling=True)


def local_nodes() -> list[dict[str, float]]:
    """This machine as a one-node cluster (for checks made without a running Ray)."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # torch builds without CUDA can raise here
        pass
    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}]


def local_shape() -> ClusterShape:
    return shape_from_nodes(local_nodes(), source="this machine")


def load_cluster_file(path: str) -> ClusterShape:
    """A cluster YAML (``clusters/aws.yaml``) read as the shape it can grow to; for planning
    a sweep on a machine that is not the cluster (``raydt sweep --dry-run --cluster FILE``)."""
    from pathlib import Path

    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--cluster {path}: no such file; give a cluster YAML such as clusters/aws.yaml")
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"--cluster {path}: not valid YAML ({exc})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"--cluster {path}: expected a Ray cluster YAML (a mapping with available_node_types)")
    if "available_node_types" not in config or not declares_resources(config):
        raise ConfigError(f"--cluster {path}: its nodes' CPUs and GPUs are left for Ray to detect on each machine "
                          "(the local provider); plan the sweep on the running cluster instead: "
                          "raydt sweep SPEC --dry-run --address auto")
    return shape_from_autoscaler_config(config, source=str(file))
