"""What several test modules share: the tiny run, model and pre-training every test shrinks
to, and ways to run the ``raydt`` command and wait on what it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from raydt.config import ExperimentConfig, ModelConfig, load_config
from raydt.data.trajectories import Trajectories

REPO = Path(__file__).resolve().parents[1]
RUN_SPEC = REPO / "tune_specs/runs/hopper_medium_dt.yaml"

TINY_DATASET = "generated:hopper-medium?steps=3000"
"""The dataset of the tiny run; made once per test session (``conftest.py``)."""
TINY_RUN = [
    f"data.dataset={TINY_DATASET}",
    "data.context_length=5",
    "model.n_embd=32", "model.n_head=2", "model.n_layer=2",
    "train.steps=12", "train.eval_every=4", "train.log_every=2", "train.batch_size=8",
    "optim.warmup_steps=4", "eval.episodes=2", "resources.cpus_per_worker=1",
]
"""``--set`` overrides that shrink the hopper run spec to seconds."""

TINY_MODEL = ModelConfig(n_embd=32, n_head=2, n_layer=2, dropout=0.0)

TINY_PRETRAIN = """
corpus: {text: "pydoc:", tokenizer: bpe, vocab_size: 300, block_size: 32}
model: {n_embd: 32, n_head: 2, n_layer: 2, dropout: 0.0}
optim: {lr: 3e-3, warmup_steps: 5}
train: {steps: 40, batch_size: 8, eval_every: 20, log_every: 10, eval_blocks: 8}
"""
"""A ChibiT pre-training spec that runs in seconds on the Python docs."""


def tiny_config(*extra: str) -> ExperimentConfig:
    return load_config(RUN_SPEC, [*TINY_RUN, *extra])


def quiet():
    from raydt.train.loop import RunContext

    return RunContext(log=lambda _: None)


def tiny_model(context_length=6, obs_dim=5, act_dim=2, seed=0, cfg=TINY_MODEL):
    from raydt.model.build import build_model

    torch.manual_seed(seed)
    model, _ = build_model(cfg, obs_dim, act_dim, context_length, max_timestep=100)
    return model


def random_batch(b=4, k=6, obs_dim=5, act_dim=2, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        states=torch.randn(b, k, obs_dim, generator=g),
        actions=torch.rand(b, k, act_dim, generator=g) * 2 - 1,
        returns_to_go=torch.randn(b, k, 1, generator=g),
        timesteps=torch.randint(0, 100, (b, k), generator=g),
        mask=torch.ones(b, k, dtype=torch.bool),
    )


def random_trajectories(rng, lengths, obs_dim=3, act_dim=2, env_id="Hopper-v4") -> Trajectories:
    n = int(sum(lengths))
    ends = np.zeros(n, bool)
    ends[np.cumsum(lengths) - 1] = True
    return Trajectories.from_flags(
        rng.normal(size=(n, obs_dim)), rng.uniform(-1, 1, (n, act_dim)), rng.normal(size=n),
        ends, None, env_id=env_id,
    )


# --------------------------------------------------------------------------------------
# The command, as a user runs it


def raydt(*args: str, check: bool = True, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "raydt", *args], cwd=cwd, capture_output=True, text=True, env=os.environ | (env or {})
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"raydt {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def tiny_run_yaml(*leave_out: str) -> str:
    """:data:`TINY_RUN` as spec lines (``key: value``), without the keys ``leave_out`` names
    (a spec may give a key once: raydt refuses duplicate keys)."""
    items = (item.split("=", 1) for item in TINY_RUN)
    return "\n".join(f"{k}: {v!r}" if ":" in v else f"{k}: {v}" for k, v in items if k not in leave_out)


def tiny_sweep(tmp_path: Path, seeds: int, steps: int = 8, extra: str = "") -> Path:
    """A grid sweep over ``seeds`` seeds of the tiny run, written to ``tmp_path/tiny.yaml``."""
    run = tiny_run_yaml("train.steps")
    text = f"""\
extends: {RUN_SPEC}
{run}
train.steps: {steps}
search:
  train.seed: {{grid: {list(range(seeds))}}}
tune:
  searcher: grid
  storage_path: {tmp_path}
  name: tiny
{textwrap.indent(extra, '  ')}
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def raydt_sweep(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, "-m", "raydt", "sweep", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def eval_steps(run_dir: Path) -> list[int]:
    """The steps at which ``run_dir``'s metrics log holds an evaluation."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "eval/normalized_score" in r]


def wait_for(predicate, timeout: float = 120.0, every: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(every)


# --------------------------------------------------------------------------------------
# Ray clusters started by a test


def ray_temp_dir() -> Path:
    """Where Ray keeps its sessions on this machine (``$RAY_TMPDIR/ray``, else ``/tmp/ray``)."""
    return Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"


def pids_where(read: str, holds) -> list[int]:
    """Pids of this machine's other processes whose ``/proc/PID/<read>`` file (``cmdline`` or
    ``environ``, NUL-separated) satisfies ``holds(list of its byte strings)``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / read).read_bytes().split(b"\0")
        except OSError:
            continue  # gone already, or not ours to read
        if holds(fields):
            pids.append(int(entry.name))
    return pids


def ray_processes(marker: str) -> list[int]:
    """Pids of processes whose title contains ``marker`` (Ray names its actors' processes
    ``ray::<Class>.<method>``)."""
    return pids_where("cmdline", lambda fields: marker.encode() in b" ".join(fields))


def free_port() -> int:
    """A TCP port nothing listens on now (for a Ray head a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_processes_under(root: Path) -> None:
    """SIGKILL every process whose working directory is under ``root``: Ray's agents retitle
    themselves and drop a test's environment tag, but keep their node's directory."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(root):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:  # gone already, or not ours
            continue


def kill_processes_with_env(name: str, value: str) -> list[int]:
    """SIGKILL every process whose environment holds ``name=value``; returns their pids."""
    wanted = f"{name}={value}".encode()
    killed = []
    for pid in pids_where("environ", lambda fields: wanted in fields):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
    return killed


# --------------------------------------------------------------------------------------
# Host syncs, counted on the CPU


class HostReads:
    """What :func:`host_reads` saw: one name per read of a tensor's values by Python."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __len__(self) -> int:
        return len(self.calls)

    def count(self, name: str) -> int:
        return self.calls.count(name)


def _is_mask_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0 for i in items)


@contextmanager
def host_reads():
    """Count every way Python code reads a tensor's values on the host, each of which is a
    device→host sync on a GPU: ``bool()``/``int()``/``float()`` of a tensor, ``.item()``,
    ``.tolist()``, ``.numpy()``, ``.cpu()``, ``.nonzero()``, indexing by a boolean mask
    (its size is known only after a sync), ``torch.cuda.synchronize()``, and host values
    made into a tensor on a device ("upload"). On a CPU this measures the mechanism a GPU
    run pays for."""
    seen = HostReads()
    patched = {}

    def wrap(owner, name, *, when=None):
        original = getattr(owner, name)
        patched[(owner, name)] = original

        def counting(*args, **kwargs):
            if when is None or when(*args, **kwargs):
                seen.calls.append(name)
            return original(*args, **kwargs)

        setattr(owner, name, counting)

    for name in ("__bool__", "__int__", "__float__", "item", "tolist", "numpy", "cpu", "nonzero"):
        wrap(torch.Tensor, name)
    wrap(torch.Tensor, "__getitem__", when=lambda _self, index: _is_mask_index(index))
    wrap(torch.Tensor, "__setitem__", when=lambda _self, index, _value: _is_mask_index(index))
    wrap(torch.cuda, "synchronize")
    # A tensor made from host values on a device is a host→device copy; from pageable
    # memory it waits for the device first.
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)
        patched[(torch, name)] = original

        def uploading(*args, _original=original, **kwargs):
            if kwargs.get("device") is not None:
                seen.calls.append("upload")
            return _original(*args, **kwargs)

        setattr(torch, name, uploading)
    try:
        yield seen
    finally:
        for (owner, name), original in patched.items():
            setattr(owner, name, original)
