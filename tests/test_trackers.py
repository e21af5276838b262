"""W&B (offline) and MLflow (a local file store), with the real libraries: every metric
and step of metrics.jsonl, the config, names and groups; a resumed run logs no step twice;
settings that cannot work are refused before anything runs."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from raydt.errors import ConfigError
from raydt.sinks import read_metrics
from raydt.train.loop import RunContext, fit
from tests.helpers import tiny_config

TRACKED = ("log.wandb.project=raydt-tests", "log.wandb.mode=offline", "log.mlflow.experiment=raydt-tests")


def wandb_records(run_dir: Path) -> list:
    """Every record of every offline W&B run under ``run_dir/wandb`` (its .wandb files are
    LevelDB-style logs of protobuf records: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if length == 0 and kind == 0:  # block padding
                pos += left
                continue
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = pb.Record()
                record.ParseFromString(pending)
                records.append(record)
    return records


def wandb_history(run_dir: Path) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            # W&B stores a key with "/" as a nested key of one part.
            items = {key: json.loads(i.value_json) for i in record.history.item
                     if not (key := i.key or "/".join(i.nested_key)).startswith("_")}
            step = record.history.step.num
            assert step not in out, f"step {step} logged twice"
            out[step] = items
    return out


def mlflow_run(tracking_uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def logged(rows: list[dict]) -> dict[int, dict[str, float]]:
    return {r["step"]: {k: v for k, v in r.items() if k != "step"} for r in rows}


def test_a_run_logs_every_metric_at_every_step_to_wandb_and_mlflow(tmp_path):
    run = tmp_path / "runs" / "tiny"
    fit(tiny_config(*TRACKED), run, RunContext(log=lambda _: None))
    rows = read_metrics(run / "metrics.jsonl")
    assert wandb_history(run) == logged(rows)
    [header] = [r.run for r in wandb_records(run) if r.WhichOneof("record_type") == "run"]
    config = {c.key: json.loads(c.value_json) for c in header.config.update}
    assert header.display_name == "tiny" and header.run_id.startswith("runs-tiny-")
    assert config["train"]["steps"] == 12 and config["data"]["context_length"] == 5

    client, [found] = mlflow_run(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "raydt-tests")
    assert found.info.run_name == "tiny" and found.info.status == "FINISHED"
    assert found.data.params["train.steps"] == "12" and found.data.params["log.mlflow.experiment"] == "raydt-tests"
    from_mlflow: dict[int, dict[str, float]] = {}
    for key in rows[-1]:
        if key != "step":
            for m in client.get_metric_history(found.info.run_id, key):
                from_mlflow.setdefault(m.step, {})[key] = m.value
    assert from_mlflow == logged(rows)


def test_a_resumed_run_continues_the_same_tracker_runs_without_a_step_twice(tmp_path):
    run = tmp_path / "runs" / "tiny"
    config = tiny_config(*TRACKED, "train.keep_checkpoints=[8]")
    fit(config, run, RunContext(log=lambda _: None))
    # As if the run had died after logging steps 10 and 12 but before their checkpoint.
    shutil.copy(run / "checkpoints" / "step_8.pt", run / "checkpoints" / "last.pt")
    fit(config, run, RunContext(log=lambda _: None), resume=True)
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert sorted(wandb_history(run)) == [2, 4, 6, 8, 10, 12]  # across both sessions' files, once each
    assert len({r.run.run_id for r in wandb_records(run) if r.WhichOneof("record_type") == "run"}) == 1
    client, found = mlflow_run(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "raydt-tests")
    assert len(found) == 1  # the same MLflow run, continued
    assert [m.step for m in client.get_metric_history(found[0].info.run_id, "train/loss")] == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize("settings, message", [
    (("log.wandb.project=p",), "no W&B API key"),
    (("log.wandb.project=p", "log.wandb.mode=offline", "log.mlflow.experiment=e",
      "log.mlflow.tracking_uri=ftp://x"), "not an MLflow tracking URI"),
    (("log.mlflow.experiment= ",), "log.mlflow.experiment is empty"),
])
def test_tracker_settings_that_cannot_work_are_refused_first(monkeypatch, tmp_path, settings, message):
    from raydt.trackers import check_trackers

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("RAYDT_OFFLINE", "0")
    with pytest.raises(ConfigError, match=message):
        check_trackers(tiny_config(*settings).log)


def test_missing_packages_and_remote_stores_are_refused(monkeypatch):
    import importlib.util

    from raydt.trackers import check_trackers

    with pytest.raises(ConfigError, match="online but downloads and uploads are off"):
        check_trackers(tiny_config("log.wandb.project=p").log)  # RAYDT_OFFLINE=1 in the tests
    with pytest.raises(ConfigError, match="tracking_uri is null.*URI storage"):
        check_trackers(tiny_config("log.mlflow.experiment=e").log, remote_storage=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r'wandb package is not installed; pip install -e "\.\[wandb\]"'):
        check_trackers(tiny_config("log.wandb.project=p", "log.wandb.mode=offline").log)


def test_train_refuses_bad_tracker_settings_before_anything_runs(tmp_path, capsys):
    from raydt.cli import main

    spec = Path(__file__).resolve().parents[1] / "tune_specs/runs/hopper_medium_dt.yaml"
    assert main(["train", str(spec), "--no-ray", "--out", str(tmp_path / "r"), "--set", "log.wandb.project=p"]) == 2
    assert "log.wandb.mode=online" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_report_uploads_a_finished_sweep_run_without_trackers(tmp_path, capsys):
    import yaml

    from raydt.cli import main

    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        fit(tiny_config(f"train.seed={seed}"), sweep / f"trial_0000{seed}", RunContext(log=lambda _: None))
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"searched_keys": ["model.backbone", "train.seed"]}))
    assert main(["report", str(sweep), "--wandb", "raydt-tests", "--wandb-mode", "offline",
                 "--mlflow", "uploads"]) == 0
    assert "uploaded trial_00001: 6 row(s) to wandb, mlflow" in capsys.readouterr().err
    for seed in (0, 1):
        run = sweep / f"trial_0000{seed}"
        assert wandb_history(run) == logged(read_metrics(run / "metrics.jsonl"))
        [header] = [r.run for r in wandb_records(run) if r.WhichOneof("record_type") == "run"]
        assert header.display_name == f"trial_0000{seed}" and header.run_group == "backbone=random"
    client, found = mlflow_run(f"sqlite:///{sweep / 'mlflow.db'}", "uploads")  # beside the runs
    assert sorted(r.info.run_name for r in found) == ["trial_00000", "trial_00001"]
    assert {r.data.tags["raydt.group"] for r in found} == {"backbone=random"}


@pytest.mark.ray
def test_a_sweep_logs_each_trial_under_its_name_and_group(tmp_path):
    from tests.helpers import raydt_sweep, tiny_sweep

    spec = tiny_sweep(tmp_path, seeds=2)
    spec.write_text(spec.read_text().replace("search:", "log.wandb.project: raydt-tests\nlog.wandb.mode: offline\n"
                                                        "log.mlflow.experiment: raydt-tests\nsearch:"))
    proc = raydt_sweep(str(spec))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    sweep = tmp_path / "tiny"
    for name in ("trial_00000", "trial_00001"):
        run = sweep / name
        assert wandb_history(run) == logged(read_metrics(run / "metrics.jsonl"))
        [header] = [r.run for r in wandb_records(run) if r.WhichOneof("record_type") == "run"]
        assert header.display_name == name and header.run_group == "all runs"  # the seeds of one group
    client, found = mlflow_run(f"sqlite:///{sweep / 'mlflow.db'}", "raydt-tests")
    assert sorted(r.info.run_name for r in found) == ["trial_00000", "trial_00001"]
    for r in found:
        rows = read_metrics(sweep / r.info.run_name / "metrics.jsonl")
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] == [row["step"] for row in rows]
