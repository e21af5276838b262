"""The reproducibility record (raydt/record.py): what it holds, read back against the sources
it comes from, and git's answer on repositories whose state the test knows."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

import torch

from raydt import record
from tests.helpers import REPO


def git(cwd, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                          cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_the_record_holds_versions_as_importlib_metadata_reads_them_and_this_machine():
    rec = record.collect()
    assert set(rec) == {"raydt", "python", "packages", "cpu", "torch_threads", "omp_num_threads", "gpus", "cuda",
                        "cudnn"}
    assert set(rec["packages"]) == {"torch", "transformers", "ray", "gymnasium", "mujoco", "ale-py", "numpy", "optuna"}
    for name, version in rec["packages"].items():
        assert version == importlib.metadata.version(name)  # all installed in the dev environment
    assert record.package_versions(("numpy", "no-such-distribution-raydt")) == {
        "numpy": importlib.metadata.version("numpy"), "no-such-distribution-raydt": None}
    from raydt import __version__

    assert rec["raydt"]["version"] == __version__
    assert rec["python"] == platform.python_version()
    assert rec["cpu"]["count"] == os.cpu_count() and rec["cpu"]["model"]
    assert rec["torch_threads"] == {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    assert rec["omp_num_threads"] == os.environ.get("OMP_NUM_THREADS")
    assert rec["cuda"] == torch.version.cuda and rec["cudnn"] == torch.backends.cudnn.version()
    if not torch.cuda.is_available():
        assert rec["gpus"] == [] and rec["cuda"] is None and rec["cudnn"] is None


def test_the_record_names_this_checkout_by_its_commit():
    state = record.git_state()
    assert state is not None
    assert state["commit"] == git(REPO, "rev-parse", "HEAD")
    assert state["dirty"] == bool(git(REPO, "status", "--porcelain"))


def test_git_commit_and_dirty_flag_on_a_repository_the_test_made(tmp_path):
    repo = tmp_path / "src"
    package = repo / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    assert record.git_state(package) is None  # not a checkout at all
    git(repo, "init", "-q")
    assert record.git_state(package) is None  # a checkout, but the package is not tracked in it
    (repo / ".gitignore").write_text("runs/\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    sha = git(repo, "rev-parse", "HEAD")
    assert len(sha) == 40
    assert record.git_state(package) == {"commit": sha, "dirty": False}
    (repo / "runs").mkdir()
    (repo / "runs" / "out.txt").write_text("ignored\n")
    assert record.git_state(package) == {"commit": sha, "dirty": False}  # ignored files are not source
    (repo / "notes.py").write_text("")  # untracked beside the package: the source changed
    assert record.git_state(package) == {"commit": sha, "dirty": True}
    (repo / "notes.py").unlink()
    (package / "__init__.py").write_text("x = 2\n")
    assert record.git_state(package) == {"commit": sha, "dirty": True}
    git(repo, "commit", "-q", "-am", "two")
    second = git(repo, "rev-parse", "HEAD")
    assert second != sha and record.git_state(package) == {"commit": second, "dirty": False}
    # A copy installed inside another checkout (a wheel in an ignored .venv) is not that checkout.
    site = repo / ".venv" / "site-packages" / "pkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("x = 2\n")
    (repo / ".gitignore").write_text("runs/\n.venv/\n")
    assert record.git_state(site) is None


def test_version_and_machine_differences_name_what_moved():
    here = record.collect()
    assert record.version_differences(here, here) == [] and record.machine_differences(here, here) == []
    old = {**here, "packages": {**here["packages"], "torch": "1.13.1"}, "cuda": "11.7",
           "raydt": {"version": here["raydt"]["version"], "git": {"commit": "abc", "dirty": True}}}
    assert record.version_differences(old, here) == [
        ("raydt commit", "abc+dirty", None if here["raydt"]["git"] is None else
         here["raydt"]["git"]["commit"] + ("+dirty" if here["raydt"]["git"]["dirty"] else "")),
        ("torch", "1.13.1", torch.__version__), ("cuda", "11.7", torch.version.cuda)]
    moved = {**here, "cpu": {"model": "Some Other CPU", "count": 64}, "gpus": ["NVIDIA H100 80GB HBM3"]}
    assert record.machine_differences(moved, here) == [("cpu", "Some Other CPU", here["cpu"]["model"]),
                                                        ("gpus", ["NVIDIA H100 80GB HBM3"], here["gpus"])]
