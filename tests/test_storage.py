"""Storage by URI: local-filesystem URIs through pyarrow, and fsspec for other schemes."""

from __future__ import annotations

import pytest

from raydt import storage
from raydt.errors import RaydtError


def make_run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "checkpoints" / "last.pt").write_bytes(b"x" * 5_000_000)  # several read chunks
    (folder / "checkpoints" / "step_0.pt").write_bytes(b"kept")
    (folder / "checkpoints" / ".last.pt.tmp-123").write_bytes(b"a write in progress")


def remote_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_mirror_uploads_changes_only_and_pulls_back(tmp_path):
    local, remote_root = tmp_path / "staging", tmp_path / "bucket"
    make_run(local)
    uri = f"file://{remote_root}/sweep/trial_00000"
    mirror = storage.Mirror(local, uri)
    assert mirror.sync_up() == 3
    assert remote_files(remote_root) == ["sweep/trial_00000/checkpoints/last.pt",
                                         "sweep/trial_00000/checkpoints/step_0.pt",
                                         "sweep/trial_00000/metrics.jsonl"]  # no temporary file
    assert mirror.sync_up() == 0  # nothing changed
    with open(local / "metrics.jsonl", "a") as f:
        f.write('{"step": 2}\n')
    assert mirror.sync_up() == 1

    elsewhere = storage.Mirror(tmp_path / "other_node", uri)  # a restart on another node
    assert elsewhere.sync_down(skip=storage.is_kept_checkpoint) == 2
    assert (tmp_path / "other_node" / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    assert (tmp_path / "other_node" / "checkpoints" / "last.pt").read_bytes() == b"x" * 5_000_000
    assert not (tmp_path / "other_node" / "checkpoints" / "step_0.pt").exists()
    assert elsewhere.sync_up() == 0  # what was pulled is not pushed back

    view = storage.local_view(f"file://{remote_root}/sweep")
    assert (view / "trial_00000" / "metrics.jsonl").exists()
    assert not (view / "trial_00000" / "checkpoints").exists()  # reports need no checkpoints
    assert (storage.local_view(f"file://{remote_root}/sweep", checkpoints=True)
            / "trial_00000" / "checkpoints" / "last.pt").exists()
    assert storage.local_view(tmp_path) == tmp_path  # local paths are used in place


def test_a_failed_upload_leaves_the_old_file(tmp_path):
    uri = f"file://{tmp_path}/store/sweep.yaml"
    storage.write_text(uri, "old")
    fs, path = storage.filesystem(uri)

    def broken(out):
        out.write(b"half of the new")
        raise OSError("connection lost")

    with pytest.raises(OSError, match="connection lost"):
        storage.put(fs, path, broken)
    assert storage.read_text(uri) == "old"
    assert remote_files(tmp_path / "store") == ["sweep.yaml"]


def test_fsspec_schemes_pyarrow_does_not_know(tmp_path):
    uri = "memory://raydt-test/sweep"
    assert not storage.exists(uri)
    storage.write_text(storage.join(uri, "sweep.yaml"), "name: tiny\n")
    assert storage.exists(uri) and storage.read_text(f"{uri}/sweep.yaml") == "name: tiny\n"
    make_run(tmp_path / "run")
    assert storage.Mirror(tmp_path / "run", f"{uri}/trial_00000").sync_up() == 3
    back = storage.Mirror(tmp_path / "back", f"{uri}/trial_00000")
    assert back.sync_down() == 3 and (tmp_path / "back" / "checkpoints" / "step_0.pt").read_bytes() == b"kept"


def test_unknown_scheme_is_named():
    with pytest.raises(RaydtError, match="nosuch://bucket.*no filesystem for nosuch://"):
        storage.exists("nosuch://bucket/sweep")


def test_train_without_ray_refuses_a_uri_out(capsys):
    from raydt.cli import main

    assert main(["train", "tune_specs/runs/hopper_medium_dt.yaml", "--no-ray", "--out", "s3://bucket/run"]) == 2
    assert "--no-ray writes a local run directory" in capsys.readouterr().err
