"""Pre-training a GPT-2 on text: Reid et al.'s ChibiT, or any size preset.

``raydt pretrain SPEC`` trains a causal LM and saves a Hugging Face directory (model and
tokenizer) that ``model.backbone`` accepts; ``model.backbone: pretrain:SPEC.yaml`` does the
same on demand (:mod:`raydt.pretrain.cache`). The parts: :mod:`~raydt.pretrain.config`
(what a run is), :mod:`~raydt.pretrain.loop` (training it), :mod:`~raydt.pretrain.cache`
(making each spec once).
"""

from raydt.config import PRETRAIN_SCHEME
from raydt.pretrain.cache import pretrained_dir, pretrained_run, resolve_backbone, shape_overrides
from raydt.pretrain.config import (
    CorpusConfig,
    PretrainConfig,
    PretrainModelConfig,
    PretrainOptimConfig,
    PretrainTrainConfig,
    load_pretrain_config,
)
from raydt.pretrain.loop import Pretraining, held_out_loss, make_tokenizer, pretrain

__all__ = [
    "PRETRAIN_SCHEME", "CorpusConfig", "PretrainConfig", "Pretraining", "PretrainModelConfig", "PretrainOptimConfig",
    "PretrainTrainConfig", "held_out_loss", "load_pretrain_config", "make_tokenizer", "pretrain",
    "pretrained_dir", "pretrained_run", "resolve_backbone", "shape_overrides",
]
