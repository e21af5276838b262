"""Shared fixtures: private data directories, no network, a session's common datasets made
once, and a local Ray for the tests that drive Ray Train in this process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_DATASET


@pytest.fixture(scope="session")
def _shared_datasets(tmp_path_factory) -> Path:
    """The datasets most tests train on, made once per session (each test gets a copy)."""
    from raydt.data.generate import make_dataset, parse_generated

    root = tmp_path_factory.mktemp("shared_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYDT_DATA_DIR", str(root))
        make_dataset(parse_generated(TINY_DATASET.split(":", 1)[1]), log=lambda _: None)
    return root


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path_factory, monkeypatch, _shared_datasets):
    """Datasets a test makes or looks for live in its own temporary folders; the session's
    common ones are copied in, so a test that rewrites or corrupts one harms no other."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(_shared_datasets, root / "raydt", ignore=shutil.ignore_patterns(".*.lock"))
    monkeypatch.setenv("RAYDT_DATA_DIR", str(root / "raydt"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(root / "d4rl"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
    monkeypatch.setenv("RAYDT_OFFLINE", "1")
    yield


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU local Ray for this module's tests; its workers can import the test modules
    (Ray Train finds a training function defined in a test by its module name)."""
    ray = pytest.importorskip("ray")
    from raydt.train.worker import REPORT_POLL_SECONDS

    env = {"PYTHONPATH": str(REPO), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(REPORT_POLL_SECONDS)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


def pytest_configure(config):
    # Keep BLAS/torch to the cores the CI has; oversubscription makes tiny tests crawl.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
