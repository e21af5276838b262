"""Prepared artifacts: named by content, published once, pulled by a node with its own disk;
a run of a prepared sweep never builds on its own node."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raydt import artifacts
from raydt.artifacts import MissingArtifact, Store, content_hash, record
from raydt.fsutil import data_dir
from tests.helpers import TINY_PRETRAIN, quiet, tiny_config


@pytest.fixture(autouse=True)
def _no_active_store():
    yield
    artifacts.deactivate()


def test_content_hash_is_the_bytes_and_ignores_locks_and_writes_in_progress(tmp_path):
    import hashlib

    (tmp_path / "f.bin").write_bytes(b"abc")
    assert content_hash(tmp_path / "f.bin") == hashlib.sha256(b"abc").hexdigest()
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x01")
    before = content_hash(folder)
    (folder / ".config.json.lock").write_text("")
    (folder / ".w.bin.tmp-123").write_text("half")
    assert content_hash(folder) == before
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x02")
    assert content_hash(folder) != before
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (folder / "sub" / "w.bin").rename(folder / "w.bin")  # same bytes, another name
    assert content_hash(folder) != before


def test_a_node_pulls_the_published_bytes_and_replaces_its_own(tmp_path, monkeypatch):
    store = Store(f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("RAYDT_DATA_DIR", str(tmp_path / "head"))
    made = data_dir() / "generated" / "x.hdf5"
    made.parent.mkdir(parents=True)
    made.write_bytes(b"the head's bytes")
    folder = data_dir() / "pretrained" / "lm-1" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"n_embd": 32}')
    file_artifact = record("dataset", "generated:x", "data", made)
    dir_artifact = record("backbone", "pretrain:lm.yaml|shape", "data", folder)
    assert (file_artifact.rel, dir_artifact.rel, dir_artifact.is_dir) == ("generated/x.hdf5", "pretrained/lm-1/model", True)
    assert store.publish(file_artifact) and store.publish(dir_artifact)
    assert not store.publish(file_artifact)  # content-addressed: once

    monkeypatch.setenv("RAYDT_DATA_DIR", str(tmp_path / "worker"))  # another node's disk
    own = data_dir() / "generated" / "x.hdf5"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"bytes this node generated itself")
    assert store.pull(file_artifact) and store.pull(dir_artifact)
    assert own.read_bytes() == b"the head's bytes"
    assert (data_dir() / "pretrained" / "lm-1" / "model" / "config.json").read_text() == '{"n_embd": 32}'
    assert not store.pull(file_artifact)  # the right bytes already: nothing fetched
    assert not list(data_dir().rglob("*.tmp-*"))

    other = record("dataset", "generated:y", "data", own)
    gone = other.__class__(**{**other.to_dict(), "sha256": "0" * 64, "rel": "generated/y.hdf5"})
    with pytest.raises(MissingArtifact, match="generated:y.*not in file://"):
        store.pull(gone)
    # A store whose bytes changed after publishing is refused, and the node's copy kept.
    published = tmp_path / "store" / "dataset" / file_artifact.sha256 / "x.hdf5"
    published.write_bytes(b"tampered")
    own.write_bytes(b"local")
    with pytest.raises(MissingArtifact, match="changed after the driver prepared it"):
        store.pull(file_artifact)
    assert own.read_bytes() == b"local"


def test_store_location(monkeypatch, tmp_path):
    monkeypatch.delenv(artifacts.VARIABLE, raising=False)
    assert artifacts.store_for(str(tmp_path)) is None  # one machine: nothing published
    assert artifacts.store_for("s3://bucket/sweeps").location == "s3://bucket/sweeps/prepared"
    monkeypatch.setenv(artifacts.VARIABLE, "gs://data/raydt")
    assert artifacts.store_for(str(tmp_path)).location == "gs://data/raydt"


def _lm_spec(tmp_path):
    spec = tmp_path / "lm.yaml"
    spec.write_text(TINY_PRETRAIN)
    return spec


def test_a_prepared_run_builds_nothing_on_a_node_that_has_nothing(tmp_path, monkeypatch):
    from raydt.prepare import artifacts_of, needs, prepare_runs
    from raydt.train.loop import RunContext, Trainer

    spec = _lm_spec(tmp_path)
    cfg = tiny_config(f"model.backbone=pretrain:{spec}", "model.n_embd=32", "model.n_head=2", "model.n_layer=2",
                      "loss.lambda1=0.1", "loss.kmeans_clusters=8", "loss.lambda2=0.1", "loss.text=pydoc:",
                      "loss.lm_block_size=16")
    store = Store(f"file://{tmp_path / 'store'}")
    log: list[str] = []
    made = prepare_runs([cfg, cfg], store, log=log.append)
    assert sorted(a.kind for a in made) == ["backbone", "dataset", "kmeans", "text"]
    assert sum(line.startswith("pre-training the backbone") for line in log) == 1
    assert sum(line.startswith("published") for line in log) == 4
    assert set(needs(cfg).items()) == {(a.kind, a.need) for a in made}

    # Another node: an empty data directory. It pulls, and builds nothing.
    monkeypatch.setenv("RAYDT_DATA_DIR", str(tmp_path / "worker"))
    used = artifacts_of(cfg, made)
    pulled: list[str] = []
    artifacts.activate(used, store, log=pulled.append)
    assert len(pulled) == 4
    trainer = Trainer(cfg, tmp_path / "run", RunContext(log=lambda _: None, artifacts=used))
    assert trainer.backbone_source == str(tmp_path / "worker" / next(a.rel for a in made if a.kind == "backbone"))
    info = trainer.run_info()["artifacts"]
    assert {kind: v["sha256"] for kind, v in info.items()} == {a.kind: a.sha256 for a in made}
    # What was not prepared fails once, naming it, instead of being built on this node.
    with pytest.raises(MissingArtifact, match="k-means centres of λ1 \\(16 clusters"):
        Trainer(tiny_config(f"model.backbone=pretrain:{spec}", "loss.lambda1=0.1", "loss.kmeans_clusters=16"),
                tmp_path / "run2", RunContext(log=lambda _: None))
    with pytest.raises(MissingArtifact, match="the dataset generated:walker2d-medium"):
        Trainer(tiny_config("data.dataset=generated:walker2d-medium?steps=2000"), tmp_path / "run3",
                RunContext(log=lambda _: None))
    assert not (tmp_path / "worker" / "generated").exists() or not list((tmp_path / "worker" / "generated").glob("walker*"))


def test_without_a_store_a_run_builds_what_it_misses_as_before(tmp_path):
    from raydt.train.loop import fit

    out = fit(tiny_config("train.steps=4"), tmp_path / "run", quiet())
    assert out["step"] == 4
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["artifacts"] == {}  # in-process fit without prepare_runs: nothing recorded


def test_train_records_the_hash_of_its_dataset(tmp_path):
    from raydt.train.driver import run_training

    run_training(tiny_config("train.steps=4"), tmp_path / "run", use_ray=False, log=lambda _: None)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    path = data_dir() / "generated"
    [file] = [p for p in path.glob("*.hdf5")]
    assert info["artifacts"]["dataset"]["sha256"] == content_hash(file)
    assert np.isfinite(json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["train/loss"])
