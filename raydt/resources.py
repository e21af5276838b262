"""Does a run fit the cluster, and how many fit at once? Checked before anything waits on Ray.

A cluster is judged by what it can become, not by the nodes alive now: on an autoscaling
cluster (``ray up clusters/aws.yaml``) the GPU nodes a sweep needs usually do not exist when
it starts; the autoscaler launches them when pending trials ask for resources. So a
:class:`ClusterShape` is a list of node types, each with its resources and the most nodes
of that type the cluster may have. It comes from the autoscaler's configuration when there
is one (:func:`shape_from_autoscaler_config`), else from the nodes alive now
(:func:`shape_from_nodes`: a fixed cluster, the local provider's machines, or this machine).
Cluster files as Ray's examples write them leave a node type's ``resources: {}`` for Ray to
fill from the instance type; raydt fills them from a live node of the type, else from
:data:`INSTANCE_TYPES`, else guesses (and says so in the plan).

Ray leaves a trainer whose workers fit no node type PENDING forever; :func:`trial_capacity`
turns that into an immediate error that says what to change. No Ray import here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from raydt.config import ExperimentConfig, ModelConfig, ResourcesConfig
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
    size_from: str = ""
    """Where CPUs or GPUs the type's ``resources`` leave out came from ("instance type
    g5.2xlarge", "its live node"); empty when it declares both or nothing tells."""
    guessed: bool = False
    """Its CPUs are unknown: it declares none and neither a live node nor the instance type
    tells. A worker type is then planned to hold one trial per node (cpus and gpus are 0),
    a head none."""

    def describe(self) -> str:
        if self.guessed:
            size = ("size unknown (no resources.CPU, no live node, no known instance type): "
                    + ("no trials planned on it" if self.head else "guessed to hold one trial per node")
                    + "; declare its resources to plan exactly")
        else:
            size = f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")
            size += f", filled in from {self.size_from}" if self.size_from else ""
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
    guessed: tuple[str, ...] = ()
    """The node types in ``per_type`` whose size was guessed (:attr:`NodeType.guessed`)."""

    def lines(self) -> list[str]:
        unit = "trial(s)" if self.placement == "STRICT_PACK" or self.workers == 1 else "worker(s)"
        return [f"{name}: {per} {unit} per node" + (" (size guessed)" if name in self.guessed else "")
                + f", up to {nodes} node(s)" for name, per, nodes in self.per_type]


def placement_strategy(res: ResourcesConfig) -> str:
    """``resources.placement`` resolved: ``auto`` keeps a multi-GPU trial on one node
    (STRICT_PACK: NCCL over NVLink/PCIe, not the network) and lets others pack loosely."""
    if res.placement != "auto":
        return res.placement.upper()
    return "STRICT_PACK" if res.use_gpu and res.num_workers > 1 else "PACK"


MEASURED_GPU_SHARES: dict[str, float] = {}
"""Model (``model.size`` of a DT built from scratch or from a ``pretrain:`` backbone, else the
backbone's id) → the share of one GPU that ``resources.gpus_per_worker: auto`` gives a trial:
the smallest share at which ``bench/gpu_sweep.py`` measured every trial to finish and the GPU
to complete at least 1.1× the trials per hour of a whole GPU per trial (``python -m
bench.gpu_tables`` prints the entries a GPU run supports). Sizes not measured get a whole GPU."""


def model_key(model: ModelConfig) -> str:
    """The key of :data:`MEASURED_GPU_SHARES` for a run's model."""
    if model.backbone == "random" or model.backbone.startswith("pretrain:"):
        return model.size
    return model.backbone


def gpu_share(config: ExperimentConfig, measured: dict[str, float] | None = None) -> float:
    """``resources.gpus_per_worker`` as a number: ``auto`` resolved by the model."""
    share = config.resources.gpus_per_worker
    if share != "auto":
        return float(share)
    if config.resources.num_workers > 1:
        return 1.0  # DDP trials keep whole GPUs
    return (MEASURED_GPU_SHARES if measured is None else measured).get(model_key(config.model), 1.0)


def with_gpu_share(config: ExperimentConfig, measured: dict[str, float] | None = None) -> ExperimentConfig:
    """``config`` with ``resources.gpus_per_worker: auto`` replaced by its share."""
    if config.resources.gpus_per_worker != "auto":
        return config
    resources = dataclasses.replace(config.resources, gpus_per_worker=gpu_share(config, measured))
    return dataclasses.replace(config, resources=resources)


def gpus_per_worker(res: ResourcesConfig) -> float:
    """GPUs each worker asks Ray for: 0 on CPU, else ``resources.gpus_per_worker``; refused
    for a DDP run that asks for a share (NCCL ranks sharing one GPU only contend)."""
    if not res.use_gpu:
        return 0.0
    if res.gpus_per_worker == "auto":
        raise AssertionError("resolve resources.gpus_per_worker=auto with with_gpu_share() first")
    if res.gpus_per_worker < 1 and res.num_workers > 1:
        raise ConfigError(f"resources.gpus_per_worker={res.gpus_per_worker:g} with resources.num_workers="
                          f"{res.num_workers}: a multi-worker (DDP) run keeps whole GPUs; set gpus_per_worker=1, "
                          "or num_workers=1 to share a GPU between trials")
    return float(res.gpus_per_worker)


def _fits(have: float, need: float) -> int:
    """How many ``need`` fit in ``have``; fractions like 0.1 are not exact in binary, so
    10 × 0.1 must still fit in 1."""
    return int(math.floor(have / need + 1e-9)) if need else 0


def trial_capacity(res: ResourcesConfig, cluster: ClusterShape | list[dict[str, float]], where: str) -> Capacity:
    """How many runs of ``res`` the cluster holds at once (≥ 1), or a :class:`ConfigError`
    naming what does not fit. ``cluster`` may be a list of node resource dicts (a fixed
    cluster)."""
    shape = cluster if isinstance(cluster, ClusterShape) else shape_from_nodes(cluster)
    cpus, gpus, workers = res.cpus_per_worker, gpus_per_worker(res), res.num_workers
    placement = placement_strategy(res)
    need = f"{cpus} CPU" + (f" and {gpus:g} GPU" if gpus else "")

    def per_node(t: NodeType, n: int) -> int:  # how many n-worker groups one node holds
        if t.guessed:  # an unknown size: planned optimistically as one trial's workers (on one GPU), not refused
            return 0 if t.head else max(1, workers // n) * (_fits(1.0, gpus) if 0 < gpus < 1 else 1)
        fit = _fits(t.cpus, n * cpus)
        if 0 < gpus < 1:  # Ray fills a fractional request from one GPU: shares do not straddle two
            return min(fit, _fits(1.0, gpus) * int(t.gpus + 1e-9))
        return min(fit, _fits(t.gpus, n * gpus)) if gpus else fit

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
    per_type, units, guessed = [], 0, []
    for t in usable:
        own = 1 if t.head else 0  # the head node itself is not a launched worker
        nodes = own + int(min(t.max_nodes - own, max(left, t.alive - own)))
        left -= nodes - own
        if nodes:
            per_type.append((t.name, per_node(t, group), nodes))
            units += per_node(t, group) * nodes
            guessed += [t.name] if t.guessed else []
    trials = units if placement == "STRICT_PACK" else units // workers
    if trials < 1:
        raise ConfigError(
            f"{where}: one run needs {workers} workers × {need} but the cluster can have "
            f"{shape.max_cpus:g} CPU and {shape.max_gpus:g} GPU in all (node types from {shape.source}: "
            f"{kinds}); lower resources.num_workers or resources.cpus_per_worker"
        )
    return Capacity(trials, placement, tuple(per_type), workers, tuple(guessed))


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
                                 live: dict[str, list[dict[str, float]]] | None = None) -> ClusterShape:
    """The shape a Ray autoscaler config (``ray up``'s cluster YAML, or the bootstrap copy on
    the head) lets the cluster grow to. ``live`` holds the resources of the nodes of each type
    up now (:func:`live_nodes_by_type`); they also fill in what a type's ``resources`` leave out."""
    live = live or {}
    node_types = _node_types(config, source)
    # Ray's defaults: the cluster's max_workers is 2, and a type's is the cluster's.
    cap = _count(config.get("max_workers", 2), "max_workers", source)
    head_type = config.get("head_node_type")
    types = []
    for name, spec in node_types.items():
        head = name == head_type
        up = live.get(name, [])
        cpus, gpus, size_from = _type_size(name, spec, up, source)
        # A head type can launch workers of its own type too (the local provider's one type).
        most = _count(spec.get("max_workers", cap), f"available_node_types.{name}.max_workers", source) + (1 if head else 0)
        types.append(NodeType(name, cpus or 0.0, gpus, max(most, len(up)), alive=len(up), head=head,
                              size_from=size_from, guessed=cpus is None))
    return ClusterShape(tuple(types), source, autoscaling=True, max_worker_nodes=cap)


def _count(value: Any, key: str, source: str) -> int:
    """A node count of a cluster file: a whole number ≥ 0, or a one-line error naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise ConfigError(f"{source}: {key} is {value!r}; give a whole number of nodes, 0 or more")
    return int(value)


def is_local_provider(config: dict[str, Any]) -> bool:
    """Whether a cluster config uses Ray's local provider (``clusters/local.yaml``): machines
    that exist, whose CPUs and GPUs Ray detects as each joins, so the nodes alive now are the
    cluster. Every other provider (aws, gcp, azure, Ray's fake_multinode, …) launches nodes
    of its node types; how much a type declares says nothing about which kind it is."""
    provider = config.get("provider")
    return isinstance(provider, dict) and provider.get("type") == "local"


NODE_GROUP_LABEL = "ray.io/node-group"
"""The label Ray gives a node whose ``ray start`` ran with ``RAY_NODE_TYPE_NAME`` set: the
node type, for the head and every worker that ``ray up``'s autoscaler v2 (Ray's default
since 2.50) launches, and the group of a KubeRay pod. Nodes launched by autoscaler v1 (and
Ray's fake multi-node provider) lack it: they are matched by size."""

HEAD_RESOURCE = "node:__internal_head__"
"""The resource Ray gives the head node alone."""


def live_nodes_by_type(config: dict[str, Any], nodes: list[dict[str, Any]],
                       source: str) -> dict[str, list[dict[str, float]]]:
    """The CPUs and GPUs of the nodes alive now, per node type of the autoscaler ``config``.

    ``nodes`` are ``ray.nodes()`` entries (``Resources``, ``Labels``). A node's type is the
    head type for the head (Ray's head marker), its :data:`NODE_GROUP_LABEL` where Ray set
    it, else the first worker type of the same CPU and GPU counts (declared, or those of its
    instance type), the head type last. A node that matches no type is left out.
    """
    node_types = _node_types(config, source)
    head = config.get("head_node_type")
    sizes = []
    for name, spec in sorted(node_types.items(), key=lambda item: item[0] == head):
        declared, known = _declared(name, spec, source), instance_size(spec.get("node_config"))
        cpus = declared.get("CPU", known[1] if known else None)
        if cpus is not None:  # a type of unknown size cannot be recognised by size
            sizes.append((name, (cpus, declared.get("GPU", known[2] if known else 0.0))))
    out: dict[str, list[dict[str, float]]] = {}
    for node in nodes:
        res = node.get("Resources") or {}
        size = {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0))}
        label = (node.get("Labels") or {}).get(NODE_GROUP_LABEL)
        if HEAD_RESOURCE in res and head in node_types:
            name = head
        elif label in node_types:
            name = label
        else:
            name = next((n for n, s in sizes if s == (size["CPU"], size["GPU"])), None)
        if name is not None:
            out.setdefault(name, []).append(size)
    return out


def _node_types(config: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    node_types = config.get("available_node_types")
    if not isinstance(node_types, dict) or not node_types:
        raise ConfigError(f"{source}: no available_node_types; raydt needs the cluster's node types to plan: "
                          "list them as `ray up` files do (see clusters/aws.yaml)")
    for name, spec in node_types.items():
        if spec is not None and not isinstance(spec, dict):
            raise ConfigError(f"{source}: available_node_types.{name} is {spec!r}; give it node_config "
                              "and resources as in clusters/aws.yaml")
        resources = (spec or {}).get("resources")
        if resources is not None and not isinstance(resources, dict):
            raise ConfigError(f"{source}: available_node_types.{name}.resources is {resources!r}; give a "
                              "mapping such as {CPU: 8, GPU: 1}, or {} for Ray to fill from the instance type")
    return {name: spec or {} for name, spec in node_types.items()}


def _declared(name: str, spec: dict[str, Any], source: str) -> dict[str, float]:
    """The CPU and GPU counts a node type's ``resources`` state (the keys it leaves out are absent)."""
    resources = spec.get("resources") or {}
    out = {}
    for key in ("CPU", "GPU"):
        if key in resources:
            try:
                out[key] = float(resources[key])
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: available_node_types.{name}.resources.{key} is {resources[key]!r}; "
                                  "give a number, or leave it out for Ray to fill from the instance type") from None
    return out


def _type_size(name: str, spec: dict[str, Any], live: list[dict[str, float]],
               source: str) -> tuple[float | None, float, str]:
    """A node type's CPUs (None: unknown) and GPUs, and where those it does not declare came
    from. As Ray fills them: each count the type's ``resources`` leave out comes from its
    live nodes (the smallest: every node of the type must hold what is planned on it), else
    its instance type; a type that declares CPUs but no GPUs of an unknown instance has none
    (Ray's autoscaler plans it so)."""
    declared, known = _declared(name, spec, source), instance_size(spec.get("node_config"))
    size, origin = dict(declared), ""
    for key, index in (("CPU", 1), ("GPU", 2)):
        if key in size:
            continue
        if live:
            size[key], origin = min(n[key] for n in live), "its live node" + ("s" if len(live) > 1 else "")
        elif known is not None:
            size[key], origin = known[index], known[0]
    return size.get("CPU"), size.get("GPU", 0.0), origin


# --------------------------------------------------------------------------------------
# Instance types: what Ray fills into a node type that leaves its resources out


def _xlarge(family: str, *sizes: int) -> dict[str, tuple[int, int]]:
    # EC2's general-purpose and compute families: .large has 2 vCPUs, .xlarge 4, .Nxlarge 4N.
    return {f"{family}.large": (2, 0), f"{family}.xlarge": (4, 0), **{f"{family}.{n}xlarge": (4 * n, 0) for n in sizes}}


def _g5_like(family: str) -> dict[str, tuple[int, int]]:
    # g5, g6 and g6e share one size ladder: one GPU up to 16xlarge, four at 12x and 24x, eight at 48x.
    return {f"{family}.xlarge": (4, 1), f"{family}.2xlarge": (8, 1), f"{family}.4xlarge": (16, 1),
            f"{family}.8xlarge": (32, 1), f"{family}.16xlarge": (64, 1), f"{family}.12xlarge": (48, 4),
            f"{family}.24xlarge": (96, 4), f"{family}.48xlarge": (192, 8)}


INSTANCE_TYPES: dict[str, tuple[int, int]] = {
    # AWS node_config.InstanceType
    **_g5_like("g5"),  # NVIDIA A10G
    **_g5_like("g6"),  # L4
    **_g5_like("g6e"),  # L40S
    "g4dn.xlarge": (4, 1), "g4dn.2xlarge": (8, 1), "g4dn.4xlarge": (16, 1), "g4dn.8xlarge": (32, 1),
    "g4dn.16xlarge": (64, 1), "g4dn.12xlarge": (48, 4), "g4dn.metal": (96, 8),  # T4
    "p3.2xlarge": (8, 1), "p3.8xlarge": (32, 4), "p3.16xlarge": (64, 8), "p3dn.24xlarge": (96, 8),  # V100
    "p4d.24xlarge": (96, 8), "p4de.24xlarge": (96, 8),  # A100
    "p5.48xlarge": (192, 8), "p5e.48xlarge": (192, 8), "p5en.48xlarge": (192, 8),  # H100; p5e, p5en: H200
    **_xlarge("m5", 2, 4, 8, 12, 16, 24),
    **_xlarge("c5", 2, 4, 9, 12, 18, 24),
    **_xlarge("m6i", 2, 4, 8, 12, 16, 24, 32),
    **_xlarge("c6i", 2, 4, 8, 12, 16, 24, 32),
    # GCP node_config.machineType: the vCPUs end its name; n1's GPUs are its guestAccelerators
    **{f"n1-{kind}-{n}": (n, 0) for kind in ("standard", "highmem", "highcpu") for n in (2, 4, 8, 16, 32, 64, 96)},
    "n1-standard-1": (1, 0),
    **{f"n2-standard-{n}": (n, 0) for n in (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)},
    **{f"e2-standard-{n}": (n, 0) for n in (2, 4, 8, 16, 32)},
    "a2-highgpu-1g": (12, 1), "a2-highgpu-2g": (24, 2), "a2-highgpu-4g": (48, 4), "a2-highgpu-8g": (96, 8),
    "a2-megagpu-16g": (96, 16),  # A100 40 GB; ultragpu: A100 80 GB
    "a2-ultragpu-1g": (12, 1), "a2-ultragpu-2g": (24, 2), "a2-ultragpu-4g": (48, 4), "a2-ultragpu-8g": (96, 8),
    "g2-standard-4": (4, 1), "g2-standard-8": (8, 1), "g2-standard-12": (12, 1), "g2-standard-16": (16, 1),
    "g2-standard-24": (24, 2), "g2-standard-32": (32, 1), "g2-standard-48": (48, 4), "g2-standard-96": (96, 8),  # L4
    "a3-highgpu-8g": (208, 8),  # H100
    # Azure node_config.azure_arm_parameters.vmSize (case-insensitive: kept lowercase)
    "standard_nc6s_v3": (6, 1), "standard_nc12s_v3": (12, 2), "standard_nc24s_v3": (24, 4),
    "standard_nc24rs_v3": (24, 4),  # V100
    "standard_nc4as_t4_v3": (4, 1), "standard_nc8as_t4_v3": (8, 1), "standard_nc16as_t4_v3": (16, 1),
    "standard_nc64as_t4_v3": (64, 4),
    "standard_nc24ads_a100_v4": (24, 1), "standard_nc48ads_a100_v4": (48, 2), "standard_nc96ads_a100_v4": (96, 4),
    "standard_nd96asr_v4": (96, 8), "standard_nd96amsr_a100_v4": (96, 8),
    "standard_nc40ads_h100_v5": (40, 1), "standard_nc80adis_h100_v5": (80, 2), "standard_nd96isr_h100_v5": (96, 8),
    **{f"standard_d{n}s_v3": (n, 0) for n in (2, 4, 8, 16, 32, 48, 64)},
    **{f"standard_d{n}s_v5": (n, 0) for n in (2, 4, 8, 16, 32, 48, 64, 96)},
}
"""(vCPUs, GPUs) of the instance types sweeps commonly run on, as Ray detects them on the
machine: ``ray up`` fills an AWS node type's ``resources: {}`` the same way, and on GCP and
Azure each node reports its own when it joins."""


def instance_size(node_config: Any) -> tuple[str, float, float] | None:
    """(the instance, named for the plan; its vCPUs; its GPUs) of a node type's
    ``node_config`` when :data:`INSTANCE_TYPES` knows it."""
    if not isinstance(node_config, dict):
        return None
    azure = node_config.get("azure_arm_parameters")
    for what, name in (("instance type", node_config.get("InstanceType")),
                       ("machine type", node_config.get("machineType")),
                       ("vmSize", azure.get("vmSize") if isinstance(azure, dict) else None)):
        if not isinstance(name, str):
            continue
        short = name.rsplit("/", 1)[-1]  # GCP also takes zones/<zone>/machineTypes/<type>
        if short.lower() not in INSTANCE_TYPES:
            return None
        cpus, gpus = INSTANCE_TYPES[short.lower()]
        extra = node_config.get("guestAccelerators") if what == "machine type" else None
        if not gpus and isinstance(extra, list):  # n1 and other GCP types take attached GPUs
            attached = sum(a.get("acceleratorCount", 1) for a in extra
                           if isinstance(a, dict) and isinstance(a.get("acceleratorCount", 1), int))
            if attached:
                return f"{what} {short} with {attached} guestAccelerators", float(cpus), float(attached)
        return f"{what} {short}", float(cpus), float(gpus)
    return None


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
    if is_local_provider(config):
        raise ConfigError(f"--cluster {path}: its nodes' CPUs and GPUs are left for Ray to detect on each machine "
                          "(the local provider); plan the sweep on the running cluster instead: "
                          "raydt sweep SPEC --dry-run --address auto")
    if not config.get("available_node_types"):
        raise ConfigError(f"--cluster {path}: no available_node_types; raydt plans a sweep from the cluster's "
                          "node types: list them as `ray up` files do (see clusters/aws.yaml)")
    # Node types with `resources: {}` (as Ray's example files leave them) get their instance
    # type's size, else are planned as guessed: no live node can tell here.
    return shape_from_autoscaler_config(config, source=str(file))
