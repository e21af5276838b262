"""``model.backbone: pretrain:SPEC.yaml``: a pre-trained backbone made on demand, cached by
the resolved spec, so a sweep can compare random and language-pretrained initialisation
with no file made by hand."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raydt.artifacts import refuse_build
from raydt.config import PRETRAIN_SCHEME, to_dict
from raydt.errors import ConfigError
from raydt.fsutil import atomic_write_text, data_dir, locked
from raydt.pretrain.config import PretrainConfig, load_pretrain_config
from raydt.pretrain.loop import MODEL, pretrain
from raydt.rundir import RunDir

DONE = "done"
"""Written once a cached pre-training run has finished; its model directory is then final."""


def pretrained_run(spec_path: str | Path, overrides: Any = ()) -> tuple[PretrainConfig, Path]:
    """The resolved config of a ``pretrain:`` spec and the cache folder of its run."""
    spec_path = Path(spec_path).expanduser()
    if not spec_path.is_file():
        raise ConfigError(f"model.backbone=pretrain:{spec_path}: spec file not found")
    cfg = load_pretrain_config(spec_path, overrides)
    key = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]
    return cfg, data_dir() / "pretrained" / f"{spec_path.stem}-{key}"


def shape_overrides(shape: Any) -> dict[str, Any]:
    """Pre-training overrides that give the LM the shape of a run's :class:`ModelConfig`."""
    return {"model.size": shape.size, "model.n_embd": shape.n_embd,
            "model.n_head": shape.n_head, "model.n_layer": shape.n_layer}


def pretrained_dir(spec_path: str | Path, overrides: Any = (), log: Callable[[str], None] = print) -> Path:
    """The model directory pre-trained from ``spec_path`` (with ``overrides``), made if missing.

    Cached under ``$RAYDT_DATA_DIR/pretrained/<spec name>-<hash of the resolved spec>/``;
    concurrent callers (sweep trials, DDP ranks) wait for one maker; an interrupted maker's
    run resumes.
    """
    cfg, run_dir = pretrained_run(spec_path, overrides)
    model_dir, done = run_dir / MODEL, run_dir / DONE
    with locked(done):
        if done.is_file():
            return model_dir
        refuse_build(f"the pre-trained backbone pretrain:{spec_path}")
        log(f"pre-training the backbone of {spec_path} into {run_dir} (once; later runs reuse it)")
        pretrain(cfg, run_dir, resume=RunDir(run_dir).last.is_file(), log=log)
        atomic_write_text(done, json.dumps({"spec": str(spec_path)}))
    return model_dir


def resolve_backbone(backbone: str, shape: Any = None, log: Callable[[str], None] = print) -> str:
    """``model.backbone`` with a ``pretrain:`` spec replaced by the directory it makes.

    ``shape`` (the run's :class:`raydt.config.ModelConfig`) sets the pre-trained model's size:
    the language-pretrained twin of a run has that run's size preset and dimensions, so a
    sweep over ``model.size × model.backbone ∈ {random, pretrain:…}`` is Reid's size study.
    """
    if not backbone.startswith(PRETRAIN_SCHEME):
        return backbone
    overrides = shape_overrides(shape) if shape is not None else {}
    return str(pretrained_dir(backbone[len(PRETRAIN_SCHEME):], overrides, log=log))
