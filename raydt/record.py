"""The reproducibility record: what software and hardware a run ran on.

Rank 0 writes it into ``run_info.json`` (key ``record``) at the start of every session, and
``raydt reproduce`` compares it with the installed versions. Everything here reads metadata
only: package versions come from ``importlib.metadata`` (importing Ray or MuJoCo to ask them
would cost seconds and, for Ray, break the core's rule of not importing it), and a fact that
cannot be read is null, never an error: a record must not stop a run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "transformers", "ray", "gymnasium", "mujoco", "ale-py", "numpy", "optuna")
"""The distributions whose versions can move a run's numbers or its behaviour."""

SOURCE = Path(__file__).resolve().parent
"""raydt's own source directory, whose git state the record names."""

GIT_TIMEOUT_S = 10
"""A git that hangs (a network filesystem, a lock) costs the run this much, then is null."""


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Each distribution's installed version (``importlib.metadata``), null when absent."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: Path = SOURCE) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout ``path`` is tracked in; None
    when it is not one (a wheel install, no git binary, a repository git refuses to read).

    ``path`` must itself be tracked: a wheel installed into a virtual environment that sits
    inside some other checkout would otherwise be credited with that checkout's commit.
    ``dirty`` is any change to a tracked file or any untracked file git does not ignore (a
    new module changes the code as much as an edited one)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True,
                              timeout=GIT_TIMEOUT_S).stdout
    try:
        git("ls-files", "--error-unmatch", "--", "__init__.py")  # fails where the package is not tracked
        commit = git("rev-parse", "HEAD").strip()
        # The whole working tree (git status is not limited to the directory it runs in):
        # tests and specs beside the package are part of the source.
        dirty = bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def cpu_model() -> str | None:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def gpu_names() -> list[str]:
    """The name of every CUDA device this process sees ([] without one)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def collect() -> dict[str, Any]:
    """The record of this process: raydt's version and source, package versions, Python,
    CPU, threads and GPUs."""
    from raydt import __version__

    return {
        "raydt": {"version": __version__, "git": git_state()},
        "python": platform.python_version(),
        "packages": package_versions(),
        "cpu": {"model": cpu_model(), "count": os.cpu_count()},
        # Thread counts change the reduction order of CPU kernels, hence the last bits.
        "torch_threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpus": gpu_names(),
        "cuda": torch.version.cuda,  # None on CPU builds
        "cudnn": torch.backends.cudnn.version(),  # None on CPU builds
    }


def version_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, recorded, installed) for every version in ``recorded`` (a :func:`collect`
    result read back from ``run_info.json``) that differs from ``current``: raydt and its
    commit, Python, each package, CUDA and cuDNN."""
    def versions(record: dict[str, Any]) -> dict[str, Any]:
        raydt = record.get("raydt") or {}
        git = raydt.get("git") or {}
        return {
            "raydt": raydt.get("version"),
            "raydt commit": (git.get("commit", "") + ("+dirty" if git.get("dirty") else "")) or None,
            "python": record.get("python"),
            **(record.get("packages") or {}),
            "cuda": record.get("cuda"),
            "cudnn": record.get("cudnn"),
        }

    before, now = versions(recorded), versions(current)
    return [(name, value, now.get(name)) for name, value in before.items() if value != now.get(name)]


def machine_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, recorded, here) for each machine fact that can change a CPU run's last bits or
    a GPU run's kernels: the CPU model (its instruction set), torch's thread counts,
    OMP_NUM_THREADS and the GPUs."""
    def facts(record: dict[str, Any]) -> dict[str, Any]:
        threads = record.get("torch_threads") or {}
        return {"cpu": (record.get("cpu") or {}).get("model"), "torch threads": threads.get("intra_op"),
                "torch interop threads": threads.get("inter_op"), "OMP_NUM_THREADS": record.get("omp_num_threads"),
                "gpus": record.get("gpus")}

    before, now = facts(recorded), facts(current)
    return [(name, value, now[name]) for name, value in before.items() if value != now[name]]
