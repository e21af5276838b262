"""The ``raydt`` command end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from raydt.config import ExperimentConfig, leaf_fields
from tests.helpers import raydt


def test_spec_show_resolves_with_overrides():
    out = raydt("spec", "show", "tune_specs/runs/hopper_medium_dt.yaml", "--set", "optim.lr=3e-4").stdout
    resolved = yaml.safe_load(out)
    assert resolved["optim"]["lr"] == 3e-4
    assert resolved["data"]["dataset"].startswith("generated:hopper-medium")
    assert resolved["train"]["batch_size"] == 64


def test_spec_show_doc_documents_every_leaf():
    out = raydt("spec", "show", "tune_specs/runs/hopper_medium_dt.yaml", "--doc").stdout
    for key, (_, doc) in leaf_fields(ExperimentConfig).items():
        assert f"# {doc}" in out, key


def test_user_mistakes_are_one_line_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 1\n")
    for args, fragment in [
        (("spec", "show", str(bad)), f"error: {bad}: unknown key in section 'optim' 'optim.lrr'"),
        (("spec", "show", "tune_specs/runs/hopper_medium_dt.yaml", "--set", "train.steps=x"), "expected an integer"),
        (("data", "info", "nothing:here"), "error: dataset URI 'nothing:here' is not understood"),
        (("data", "info", "d4rl:hopper-medium-v2"), "raydt data make generated:hopper-medium"),
        (("data", "make", "generated:ant-medium"), "valid tasks: hopper, halfcheetah, walker2d"),
        (("data", "make", "d4rl:hopper-medium-v2"), "makes generated: datasets only"),
    ]:
        proc = raydt(*args, check=False)
        assert proc.returncode == 2, args
        assert fragment in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_data_make_then_info_json():
    made = json.loads(raydt("data", "make", "generated:hopper-medium", "--steps", "3000", "--seed", "2").stdout)
    assert made["uri"] == "generated:hopper-medium?steps=3000&seed=2"
    assert Path(made["path"]).is_file()
    info = json.loads(raydt("data", "info", made["uri"], "--json").stdout)
    for key in ("num_episodes", "num_steps", "obs_dim", "act_dim", "return_mean", "return_std",
                "return_min", "return_max", "normalized_return_mean"):
        assert key in info
    assert (info["num_steps"], info["obs_dim"], info["act_dim"]) == (3000, 11, 3)
    text = raydt("data", "info", made["uri"]).stdout
    assert "normalized return" in text and "transitions" in text


def test_data_train_policy_writes_snapshots(tmp_path):
    out = tmp_path / "hopper.npz"
    raydt("data", "train-policy", "hopper", "--env-steps", "3000", "--out", str(out))
    with np.load(out) as f:
        assert f["weights"].shape[1:] == (3, 11)
        assert f["weights"].shape[0] == f["eval_return_mean"].shape[0] >= 2
        assert json.loads(str(f["meta"]))["task"] == "hopper"


def test_spec_show_resolves_a_sweep_spec(capsys):
    """A sweep spec: its run part resolved (with --set), its search and every tune setting;
    --doc documents the tune keys too and prints the same YAML."""
    from raydt.cli import main
    from raydt.config import to_dict
    from raydt.tune.spec import SearchConfig, load_sweep
    from tests.helpers import REPO

    spec_file = REPO / "tune_specs/optuna_cpu.yaml"
    assert main(["spec", "show", str(spec_file), "--set", "train.steps=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    spec = load_sweep(spec_file, ["train.steps=7"])
    run_part = {k: v for k, v in shown.items() if k not in ("search", "tune", "report")}
    assert run_part == to_dict(spec.base_config()) and run_part["train"]["steps"] == 7
    assert shown["search"] == {"optim.lr": {"loguniform": [3e-5, 1e-3]}, "model.dropout": {"uniform": [0.0, 0.2]},
                               "data.context_length": {"choice": [5, 10, 20]}}
    assert shown["tune"] == to_dict(spec.tune)
    assert shown["tune"]["searcher"] == "optuna" and shown["tune"]["replicates"]["seeds"] == 2
    assert shown["tune"]["asha_grace_steps"] == 1000  # defaults shown too
    assert main(["spec", "show", str(spec_file), "--set", "train.steps=7", "--doc"]) == 0
    documented = capsys.readouterr().out
    assert yaml.safe_load(documented) == shown
    for key, (_, doc) in {**leaf_fields(ExperimentConfig), **leaf_fields(SearchConfig)}.items():
        assert f"# {doc}" in documented, key


def test_spec_show_resolves_a_pretraining_spec():
    out = raydt("spec", "show", "tune_specs/pretrain/chibit_quick.yaml", "--set", "train.steps=7").stdout
    assert "corpus:" in out and "steps: 7" in out and "block_size:" in out
