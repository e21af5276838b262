"""Shared fixtures: every test gets private data directories and no network."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path_factory, monkeypatch):
    """Datasets a test makes or looks for live in its own temporary folders."""
    root = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("RAYDT_DATA_DIR", str(root / "raydt"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(root / "d4rl"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
    monkeypatch.setenv("RAYDT_OFFLINE", "1")
    yield


def pytest_configure(config):
    # Keep BLAS/torch to the cores the CI has; oversubscription makes tiny tests crawl.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
