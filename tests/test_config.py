from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from raydt.config import (
    ExperimentConfig,
    apply_overrides,
    build,
    config_from_dict,
    leaf_fields,
    load_config,
    read_spec,
    to_dict,
    to_yaml,
)
from raydt.errors import ConfigError
from tests.helpers import REPO


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_reids_gym_settings():
    c = ExperimentConfig()
    assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps, c.optim.grad_clip) == (1e-4, 1e-4, 5000, 0.25)
    assert (c.train.batch_size, c.data.context_length, c.model.dropout) == (64, 20, 0.2)
    assert c.data.reward_scale == pytest.approx(1 / 1000)
    assert c.model.dims == (128, 1, 3)


def test_required_user_facing_keys_exist():
    keys = set(leaf_fields(ExperimentConfig))
    for key in (
        "data.dataset", "data.context_length", "data.reward_scale", "model.size", "model.backbone",
        "optim.lr", "optim.weight_decay", "optim.warmup_steps", "optim.grad_clip", "train.steps",
        "train.batch_size", "train.eval_every", "train.seed", "eval.episodes", "eval.target_returns",
        "eval.env_id", "loss.lambda1", "loss.lambda2", "resources.num_workers", "resources.use_gpu",
    ):
        assert key in keys


def test_every_leaf_has_a_docstring():
    missing = [key for key, (_, doc) in leaf_fields(ExperimentConfig).items() if not doc]
    assert missing == []


def test_extends_chain_merges_and_child_wins(tmp_path):
    write(tmp_path / "base/root.yaml", "optim:\n  lr: 3e-4\ntrain:\n  steps: 10\n")
    write(tmp_path / "base/mid.yaml", "extends: root.yaml\ntrain.steps: 20\nmodel: {size: 3m}\n")
    spec = write(tmp_path / "run.yaml", "extends: base/mid.yaml\ntrain:\n  batch_size: 8\n")
    c = load_config(spec)
    # 3e-4 is a string to YAML 1.1; the declared type makes it a float
    assert c.optim.lr == 3e-4 and isinstance(c.optim.lr, float)
    assert (c.train.steps, c.train.batch_size, c.model.size) == (20, 8, "3m")
    assert c.model.dims == (256, 4, 4)
    assert c.train.eval_every == ExperimentConfig().train.eval_every  # untouched default


def test_overrides_are_coerced_by_declared_type(tmp_path):
    spec = write(tmp_path / "run.yaml", "{}\n")
    c = load_config(spec, [
        "optim.lr=1e-3", "train.steps=2e3", "resources.use_gpu=true", "model.size=18m",
        "eval.target_returns=[3600, 1800]", "eval.env_id=Hopper-v5", "model.n_embd=64",
    ])
    assert c.optim.lr == 1e-3
    assert c.train.steps == 2000 and isinstance(c.train.steps, int)
    assert c.resources.use_gpu is True
    assert c.model.size == "18m"
    assert c.eval.target_returns == (3600.0, 1800.0)
    assert c.model.dims == (64, 8, 6)
    # a scalar where a list is declared is a list of one
    assert load_config(spec, ["eval.target_returns=3600"]).eval.target_returns == (3600.0,)


def test_overrides_and_sampled_values_share_one_path(tmp_path):
    spec = write(tmp_path / "run.yaml", "{}\n")
    raw = apply_overrides(read_spec(spec), {"loss.lambda1": 0.1, "data.context_length": 60})
    c = build(ExperimentConfig, raw.values, raw.origins)
    assert (c.loss.lambda1, c.data.context_length) == (0.1, 60)


def test_unknown_key_names_file_path_and_valid_keys(tmp_path):
    spec = write(tmp_path / "run.yaml", "optim:\n  lrr: 1e-3\n")
    with pytest.raises(ConfigError) as err:
        load_config(spec)
    msg = str(err.value)
    assert str(spec) in msg and "optim.lrr" in msg and "did you mean 'lr'" in msg
    assert "weight_decay" in msg  # the valid keys are listed


def test_unknown_key_in_parent_names_the_parent(tmp_path):
    parent = write(tmp_path / "parent.yaml", "train:\n  stepz: 1\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\n")
    with pytest.raises(ConfigError, match=str(parent)):
        load_config(child)


def test_unknown_section_and_override_key(tmp_path):
    spec = write(tmp_path / "run.yaml", "optimizer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown section 'optimizer'.*did you mean 'optim'"):
        load_config(spec)
    ok = write(tmp_path / "ok.yaml", "{}\n")
    with pytest.raises(ConfigError, match=r"--set: unknown key in section 'train' 'train.step'"):
        load_config(ok, ["train.step=5"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lr=fast", "expected a number"),
        ("train.steps=1.5", "expected an integer"),
        ("resources.use_gpu=1", "expected true|false"),
        ("resources.use_gpu=yes please", "expected true|false"),
        ("model.size=huge", "expected one of 'dt', '3m', '18m', '84m'"),
        ("train.batch_size=0", "expected a number > 0"),
        ("model.dropout=1.5", r"expected a number in \[0, 1\)"),
        ("optim", "expected KEY=VALUE"),
    ],
)
def test_wrong_values_are_rejected_with_the_expectation(tmp_path, override, expected):
    spec = write(tmp_path / "run.yaml", "{}\n")
    with pytest.raises(ConfigError, match=expected):
        load_config(spec, [override])


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    spec = write(tmp_path / "run.yaml", "train:\n  steps: lots\n")
    with pytest.raises(ConfigError, match=rf"{spec}: 'train.steps' = 'lots'.*an integer"):
        load_config(spec)


def test_bad_extends(tmp_path):
    missing = write(tmp_path / "a.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml not found \(extended from .*a.yaml\)"):
        load_config(missing)
    write(tmp_path / "x.yaml", "extends: y.yaml\n")
    write(tmp_path / "y.yaml", "extends: x.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "x.yaml")
    bad = write(tmp_path / "b.yaml", "extends: {a: 1}\n")
    with pytest.raises(ConfigError, match="'extends' must be a path"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_section_given_as_scalar_and_non_mapping_spec(tmp_path):
    spec = write(tmp_path / "run.yaml", "optim: 3\n")
    with pytest.raises(ConfigError, match="'optim' is a section"):
        load_config(spec)
    lst = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(lst)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExperimentConfig().optim.lr = 1.0  # type: ignore[misc]


def test_yaml_round_trip_is_exact(tmp_path):
    spec = write(tmp_path / "run.yaml", "eval: {target_returns: [3600, 1800]}\noptim.lr: 2.5e-4\n")
    c = load_config(spec)
    again = config_from_dict(yaml.safe_load(to_yaml(c)))
    assert again == c
    documented = to_yaml(c, doc=True)
    assert yaml.safe_load(documented) == to_dict(c)  # comments do not change the content
    assert "# Peak learning rate" in documented


def test_every_spec_in_the_repo_resolves():
    """Run specs build; sweep specs build and every searched value makes a valid trial."""
    from raydt.tune.spec import load_sweep

    specs = sorted([*(REPO / "tune_specs").rglob("*.yaml"), *(REPO / "bench" / "specs").glob("*.yaml")])
    assert specs, "tune_specs/ holds no spec"
    for spec in specs:
        if "search" in (yaml.safe_load(spec.read_text()) or {}):
            sweep = load_sweep(spec)  # probes every searched value
            point = {d.key: d.values[0] for d in sweep.dimensions}
            assert sweep.trial_config(point) is not None and sweep.num_trials >= 1
        elif spec.parent.name == "pretrain":
            from raydt.pretrain import load_pretrain_config

            load_pretrain_config(spec)
        else:
            load_config(spec)


def test_recipes_resolve_to_the_paper_and_the_released_values():
    paper = load_config(REPO / "tune_specs/base/reid_paper.yaml")
    assert (paper.optim.warmup_steps, paper.optim.eps, paper.model.ln_order, paper.model.action_head) == \
        (5000, 1e-8, "time_then_ln", "linear")
    assert (paper.loss.cosine_variant, paper.loss.lambda_schedule, paper.model.attn_dropout) == ("paper", "linear", None)
    assert paper == load_config(REPO / "tune_specs/base/reid_paper.yaml", []) and paper.train == ExperimentConfig().train
    code = load_config(REPO / "tune_specs/base/reid_code.yaml")
    # run.sh + experiment.py + utils.py + decision_transformer.py at 0f86702 (docs/fidelity.md)
    assert (code.optim.warmup_steps, code.optim.eps, code.optim.lr, code.optim.weight_decay) == (10000, 1e-6, 1e-4, 1e-4)
    assert (code.model.dropout, code.model.attn_dropout, code.model.embd_dropout) == (0.2, 0.1, 0.1)
    assert (code.model.ln_order, code.model.action_head, code.model.positions) == ("ln_then_time", "tied", "pretrained")
    assert (code.loss.lambda1, code.loss.cosine_variant, code.loss.lambda_schedule) == (0.1, "as_coded", "sigmoid")
    assert (code.train.eval_every, code.eval.episodes, code.data.context_length, code.train.batch_size) == (2500, 100, 20, 64)


def test_dt_atari_recipe_resolves_to_the_released_values():
    atari = load_config(REPO / "tune_specs/base/dt_atari.yaml")
    assert (atari.model.n_embd, atari.model.n_head, atari.model.n_layer, atari.model.activation) == (128, 8, 6, "gelu")
    assert (atari.model.time_embedding, atari.model.embed_tanh, atari.model.embed_ln) == ("global_local", True, False)
    assert (atari.optim.lr, atari.optim.betas, atari.optim.weight_decay, atari.optim.decay) == (6e-4, (0.9, 0.95), 0.1, "matmul_weights")
    assert (atari.optim.schedule, atari.optim.min_lr_ratio, atari.optim.grad_clip) == ("warmup_cosine", 0.1, 1.0)
    assert (atari.data.context_length, atari.train.batch_size, atari.data.reward_scale) == (30, 128, 1.0)
    with pytest.raises(ConfigError, match="optim.betas.*2 × a number"):
        load_config(REPO / "tune_specs/base/dt_atari.yaml", ["optim.betas=[0.9]"])


def test_duplicate_keys_empty_and_binary_specs_are_refused_by_line(tmp_path):
    from raydt.config import load_config
    from raydt.errors import ConfigError

    spec = tmp_path / "dup.yaml"
    spec.write_text("optim:\n  lr: 3.0e-4\ntrain:\n  steps: 10\noptim:\n  warmup_steps: 5\n")
    with pytest.raises(ConfigError, match=r"dup.yaml, line 5: key 'optim' appears twice.*line 1"):
        load_config(spec)
    spec.write_text("optim: {lr: 3.0e-4, lr: 1.0e-3}\n")
    with pytest.raises(ConfigError, match="line 1: key 'lr' appears twice"):
        load_config(spec)
    spec.write_text("# nothing but a comment\n\n")
    with pytest.raises(ConfigError, match="dup.yaml is empty"):
        load_config(spec)
    spec.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(spec)
