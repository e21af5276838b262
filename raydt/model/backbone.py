"""Causal transformer backbones behind one small interface, loaded with a report.

The Decision Transformer feeds a backbone embedded tokens (``inputs_embeds``) and reads its
last hidden states; λ2 co-training also feeds it text. :class:`Backbone` gives every kind
the same four operations:

* ``forward(inputs_embeds, attention_mask)`` → hidden states, with the backbone's own
  absolute positions switched off (DT adds its timestep embedding instead; Chen et al.'s
  DT removes GPT-2's position table for the same reason);
* ``lm_loss(input_ids)`` → the causal LM loss on text, positions on, output head tied to
  the token embeddings;
* ``token_embeddings`` (the matrix λ1's clusters come from) and ``position_table`` (the
  pre-trained positions, reused for timesteps when ``model.positions: pretrained``);
* ``blocks`` (for freezing, block replacement and the analyses).

Kinds: ``gpt2`` (GPT-2 and raydt's own ChibiT), ``imagegpt`` (iGPT, its own LayerNorm kept),
``clip`` (the causal text tower of CLIP; the image tower is not loaded) and ``auto`` (any
other Hugging Face model that accepts ``inputs_embeds``: Llama, GPT-NeoX, SmolLM, …).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from raydt.errors import ConfigError
from raydt.offline import is_offline

KINDS = ("gpt2", "imagegpt", "clip", "auto")


@dataclass
class LoadReport:
    """What happened to each weight when a backbone was built."""

    source: str
    """Hub id or directory the weights came from ('random' for a fresh init)."""
    kind: str = "gpt2"
    """Backbone kind: gpt2, imagegpt, clip or auto."""
    loaded: list[str] = field(default_factory=list)
    """Backbone tensors whose values came from the checkpoint."""
    new: list[str] = field(default_factory=list)
    """Backbone tensors the checkpoint lacked (freshly initialised)."""
    ignored: list[str] = field(default_factory=list)
    """Checkpoint tensors the backbone has no place for."""
    disabled: list[str] = field(default_factory=list)
    """Loaded tensors raydt switches off (the absolute-position table)."""
    frozen: list[str] = field(default_factory=list)
    """Backbone tensors left out of training (``model.freeze``)."""

    def summary(self) -> str:
        return (
            f"backbone {self.source} ({self.kind}): {len(self.loaded)} tensors loaded, "
            f"{len(self.new)} new, {len(self.ignored)} ignored, {len(self.disabled)} disabled, "
            f"{len(self.frozen)} frozen"
            + (f"; new: {', '.join(self.new[:8])}" if self.new else "")
            + (f"; ignored: {', '.join(self.ignored[:8])}" if self.ignored else "")
        )


def attention_mask_4d(mask: torch.Tensor, dtype: torch.dtype, implementation: str | None) -> torch.Tensor:
    """A (B, T) key mask as the (B, 1, T, T) causal mask the model's attention takes as it is.

    Built here because transformers, given a (B, T) mask, asks the host whether any key is
    padded (``mask.all()``) on every forward to choose its fast path: a GPU sync per step.
    Query t sees keys ≤ t that are real; a padded query also sees itself, so no row of the
    softmax is empty (its output is never used: padded steps are masked out of the loss).
    Implementations that take no 4-D mask (flash attention) get the (B, T) mask.
    """
    if implementation not in ("sdpa", "eager"):
        return mask.long()
    t = mask.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()  # (T, T)
    eye = torch.eye(t, dtype=torch.bool, device=mask.device)  # (T, T)
    allowed = causal & (mask[:, None, None, :].bool() | eye)  # (B, 1, T, T)
    if implementation == "sdpa":
        return allowed  # boolean: True takes part
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)  # additive


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the wrappers' prefixes: DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.``."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        out[key.replace("._orig_mod.", ".").replace(".module.", ".")] = value
    return out


# --------------------------------------------------------------------------------------
# The interface


class Backbone(nn.Module):
    """A Hugging Face transformer (``self.hf``) behind raydt's backbone interface."""

    kind = "auto"

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf
        table = self._own_positions()
        # The pre-trained position table, kept for text (λ2) and for `positions: pretrained`
        # while the model's own copy is switched off for trajectory tokens.
        self.register_buffer("text_positions", None if table is None else table.detach().clone())

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def n_embd(self) -> int:
        return int(self.token_embeddings.weight.shape[1])

    @property
    def token_embeddings(self) -> nn.Embedding:
        return self.hf.get_input_embeddings()

    @property
    def position_table(self) -> torch.Tensor | None:
        """(P, D) pre-trained absolute positions, or None for rotary / relative models."""
        return self.text_positions

    @property
    def blocks(self) -> nn.ModuleList:
        n = getattr(self.config, "num_hidden_layers", None)
        for module in self.hf.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return module
        raise ConfigError(f"cannot find the transformer blocks of {type(self.hf).__name__}")

    def _own_positions(self) -> torch.Tensor | None:
        return None

    def switch_off_positions(self, report: LoadReport, n_tokens: int) -> None:
        """Make the backbone ignore token order except through causal masking."""

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """inputs_embeds (B, T, D), attention_mask (B, T) → last hidden states (B, T, D)."""
        return self._run(inputs_embeds, attention_mask).last_hidden_state

    def _run(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **options: Any) -> Any:
        """The Hugging Face model's output on trajectory tokens (``options``: output_attentions)."""
        implementation = getattr(self.config, "_attn_implementation", None)
        mask = attention_mask_4d(attention_mask, inputs_embeds.dtype, implementation)
        return self.hf(inputs_embeds=inputs_embeds, attention_mask=mask, use_cache=False, **options)

    def use_eager_attention(self) -> None:
        """Switch to the plain PyTorch attention kernel (what torch.func's vmap can batch)."""
        self.hf.set_attn_implementation("eager")

    @torch.no_grad()
    def attention_maps(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every block on trajectory tokens: a list of (B, H, T, T),
        float32. Computed with the eager kernel (fused ones do not return their weights),
        then the model's own kernel is put back."""
        previous = getattr(self.config, "_attn_implementation", None)
        self.hf.set_attn_implementation("eager")
        try:
            out = self._run(inputs_embeds, attention_mask, output_attentions=True)
        finally:
            if previous and previous != "eager":
                self.hf.set_attn_implementation(previous)
        return [a.float() for a in out.attentions]

    def sublayers(self, index: int) -> dict[str, nn.Module]:
        """The named parts of block ``index`` that analyses read (here: its direct children,
        e.g. Llama's input_layernorm, self_attn, post_attention_layernorm, mlp)."""
        return dict(self.blocks[index].named_children())

    def mlp_branch(self, index: int) -> nn.Module | None:
        """Block ``index``'s MLP branch, whose output is added to the residual stream (Takagi's
        T_l for mutual information); None when the block has none by that name."""
        return getattr(self.blocks[index], "mlp", None)

    def text_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, D) of text token ids (B, L), the model's positions on."""
        return self.hf(input_ids=input_ids).last_hidden_state

    def lm_loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of ``input_ids`` (B, L), head tied to the token embeddings."""
        hidden = self.text_hidden(input_ids[:, :-1])  # (B, L-1, D)
        logits = hidden @ self.token_embeddings.weight.T  # (B, L-1, V)
        return F.cross_entropy(logits.float().flatten(0, 1), input_ids[:, 1:].flatten())

    def max_text_length(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    def norm_parameter_names(self) -> set[str]:
        """Names (relative to this module) of the normalisation layers' parameters."""
        names = set()
        for mod_name, module in self.named_modules():
            cls = type(module).__name__.lower()
            if "layernorm" in cls or "rmsnorm" in cls or isinstance(module, nn.LayerNorm):
                for p_name, _ in module.named_parameters(recurse=False):
                    names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
        return names


class GPT2Backbone(Backbone):
    """GPT-2 and ChibiT: wte, wpe, h, ln_f; the position table is zeroed for trajectories."""

    kind = "gpt2"

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.h

    def _own_positions(self) -> torch.Tensor | None:
        return self.hf.wpe.weight

    def switch_off_positions(self, report: LoadReport, n_tokens: int) -> None:
        # Zeros, and as many rows as the trajectory needs: positions no longer limit K.
        rows = max(self.hf.wpe.num_embeddings, n_tokens)
        weight = self.hf.wpe.weight
        # from_pretrained draws no random numbers: the model's init stays that of its seed.
        self.hf.wpe = nn.Embedding.from_pretrained(weight.new_zeros(rows, weight.shape[1]), freeze=True)
        report.disabled.append("hf.wpe.weight")

    def text_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.text_positions[: input_ids.shape[1]]  # (L, D)
        embeds = self.token_embeddings(input_ids) + positions  # (B, L, D)
        return self.hf(inputs_embeds=embeds).last_hidden_state

    def max_text_length(self) -> int | None:
        return None if self.text_positions is None else int(self.text_positions.shape[0])

    SUBLAYERS = ("ln_1", "attn.c_attn", "attn.c_proj", "attn.resid_dropout", "ln_2", "mlp.c_fc", "mlp.act",
                 "mlp.c_proj", "mlp.dropout")
    """The nine sub-layers of a GPT-2 block whose outputs Takagi's CKA compares (signal_propagation.py at 200abbe)."""

    def sublayers(self, index: int) -> dict[str, nn.Module]:
        block = self.blocks[index]
        try:
            return {name: block.get_submodule(name) for name in self.SUBLAYERS}
        except AttributeError:  # a GPT-2 layout without one of them (ImageGPT's MLP)
            return super().sublayers(index)

    def mlp_branch(self, index: int) -> nn.Module:
        return self.blocks[index].mlp


class ImageGPTBackbone(GPT2Backbone):
    """ImageGPT: GPT-2's layout with its own (bias-free) LayerNorm, kept as it is."""

    kind = "imagegpt"

    def __init__(self, hf: nn.Module) -> None:
        super().__init__(hf)
        # transformers' ImageGPT attention builds its masking value with torch.tensor(...,
        # device=...) in every block of every forward: a host-to-device copy, which waits
        # for the GPU. Each block gets the same arithmetic with the value made on the device.
        for block in hf.h:
            if not block.attn.reorder_and_upcast_attn:
                block.attn._attn = types.MethodType(_imagegpt_attention, block.attn)

    def _run(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **options: Any) -> Any:
        # ImageGPTModel flattens any mask it is given to (B, T) and rebuilds the causal mask
        # with a host check of the padding on every forward. Its blocks take an additive
        # (B, 1, T, T) mask as they are, so the trajectory path runs the model's own pieces
        # (positions, embedding dropout, blocks, final norm) in its order around them.
        hf = self.hf
        output_attentions = bool(options.get("output_attentions", False))
        t = inputs_embeds.shape[1]
        mask = attention_mask_4d(attention_mask, inputs_embeds.dtype, "eager")  # (B, 1, T, T) additive
        positions = hf.wpe(torch.arange(t, device=inputs_embeds.device))  # (T, D): zeros unless kept
        hidden = hf.drop(inputs_embeds + positions)  # (B, T, D)
        attentions = []
        for block in hf.h:
            out = block(hidden, attention_mask=mask, use_cache=False, output_attentions=output_attentions)
            hidden = out[0]
            if output_attentions:
                attentions.append(out[1])
        return SimpleNamespace(last_hidden_state=hf.ln_f(hidden), attentions=tuple(attentions))


def _imagegpt_attention(attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One ImageGPT attention's output and weights from its queries, keys and values
    (B, H, T, hd): scaled dot products, its causal mask (the model's ``bias`` buffer), the
    additive ``attention_mask``, softmax, dropout; as transformers' ImageGPT computes them,
    with the masking value filled on the device instead of copied from the host."""
    scores = torch.matmul(query, key.transpose(-1, -2))  # (B, H, Tq, Tk)
    if attn.scale_attn_weights:
        scores = scores / float(value.size(-1) ** 0.5)
    if attn.scale_attn_by_inverse_layer_idx:
        scores = scores / float(attn.layer_idx + 1)
    if not attn.is_cross_attention:
        q_len, k_len = query.size(-2), key.size(-2)
        causal = attn.bias[:, :, k_len - q_len : k_len, :k_len]  # (1, 1, Tq, Tk) bool
        lowest = torch.full((), torch.finfo(scores.dtype).min, dtype=scores.dtype, device=scores.device)
        scores = torch.where(causal, scores, lowest)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = attn.attn_dropout(torch.softmax(scores, dim=-1).type(value.dtype))
    return torch.matmul(weights, value), weights


class CLIPTextBackbone(Backbone):
    """CLIP's text transformer: causal, 77 learned positions, a final LayerNorm.

    Trajectory tokens go straight to the encoder (its embedding layer, which adds the
    positions, is bypassed), so the 77-token limit applies to text only.
    """

    kind = "clip"

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.encoder.layers

    def _own_positions(self) -> torch.Tensor | None:
        return self.hf.embeddings.position_embedding.weight

    def switch_off_positions(self, report: LoadReport, n_tokens: int) -> None:
        # Trajectories bypass the embedding layer, so the table would get no gradient from
        # them: left trainable, DDP (find_unused_parameters=False) fails at its second step.
        # Text keeps its pre-trained positions, fixed, as GPT-2's text positions are.
        self.hf.embeddings.position_embedding.weight.requires_grad_(False)
        report.disabled.append("hf.embeddings.position_embedding.weight (text only, frozen)")

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf.final_layer_norm(self._run(inputs_embeds, attention_mask).last_hidden_state)

    def _run(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **options: Any) -> Any:
        implementation = getattr(self.config, "_attn_implementation", None)
        if implementation in ("sdpa", "eager"):
            # The encoder hands its mask to the attention kernel as it is: a prebuilt one
            # spares create_causal_mask's host check of the padding on every forward.
            mask = attention_mask_4d(attention_mask, inputs_embeds.dtype, implementation)  # (B, 1, T, T)
        else:
            from transformers.masking_utils import create_causal_mask

            mask = create_causal_mask(
                config=self.config, inputs_embeds=inputs_embeds,
                attention_mask=attention_mask.long(), cache=None,
            )
        return self.hf.encoder(inputs_embeds=inputs_embeds, attention_mask=mask, is_causal=True, **options)

    @torch.no_grad()
    def attention_maps(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        # The bare encoder does not collect attentions (the text model's wrapper does): each
        # layer's self_attn returns (output, weights) with the eager kernel, read by a hook.
        maps: list[torch.Tensor] = []
        hooks = [layer.self_attn.register_forward_hook(lambda _m, _i, out: maps.append(out[1].float()))
                 for layer in self.blocks]
        previous = getattr(self.config, "_attn_implementation", None)
        self.hf.set_attn_implementation("eager")
        try:
            self._run(inputs_embeds, attention_mask)
        finally:
            for hook in hooks:
                hook.remove()
            if previous and previous != "eager":
                self.hf.set_attn_implementation(previous)
        return maps

    def max_text_length(self) -> int | None:
        return int(self.text_positions.shape[0])


_CLASSES: dict[str, type[Backbone]] = {
    "gpt2": GPT2Backbone, "imagegpt": ImageGPTBackbone, "clip": CLIPTextBackbone, "auto": Backbone,
}


def _kind_of(model_type: str) -> str:
    if model_type == "gpt2":
        return "gpt2"
    if model_type == "imagegpt":
        return "imagegpt"
    if model_type in ("clip", "clip_text_model"):
        return "clip"
    return "auto"


def _hf_class(kind: str) -> Any:
    import transformers

    return {
        "gpt2": transformers.GPT2Model,
        "imagegpt": transformers.ImageGPTModel,
        "clip": transformers.CLIPTextModel,
        "auto": transformers.AutoModel,
    }[kind]


# --------------------------------------------------------------------------------------
# Building


class Dropouts(NamedTuple):
    """Dropout rates of a backbone: residual branches, attention weights, input embeddings."""

    resid: float
    attn: float
    embd: float

    @classmethod
    def of(cls, value: float | Dropouts) -> Dropouts:
        return value if isinstance(value, Dropouts) else cls(value, value, value)


# Which config field of each Hugging Face family holds which rate.
_DROPOUT_FIELDS = {
    "resid": ("resid_pdrop", "hidden_dropout", "dropout", "hidden_dropout_prob"),
    "attn": ("attn_pdrop", "attention_dropout", "attention_probs_dropout_prob"),
    "embd": ("embd_pdrop",),
}


def _set_dropout(config: Any, dropout: float | Dropouts) -> None:
    rates = Dropouts.of(dropout)._asdict()
    for which, names in _DROPOUT_FIELDS.items():
        for name in names:
            if isinstance(getattr(config, name, None), float):
                setattr(config, name, rates[which])


def random_gpt2(n_embd: int, n_head: int, n_layer: int, dropout: float | Dropouts, activation: str,
                n_positions: int = 1024) -> nn.Module:
    """A freshly initialised GPT-2 of the given shape (no token vocabulary to speak of)."""
    from transformers import GPT2Config, GPT2Model

    if n_embd % n_head:
        raise ConfigError(f"model.n_embd={n_embd} is not divisible by model.n_head={n_head}")
    config = GPT2Config(
        n_embd=n_embd, n_head=n_head, n_layer=n_layer, n_inner=4 * n_embd,
        n_positions=n_positions, vocab_size=1, bos_token_id=0, eos_token_id=0,
        activation_function=activation,
        resid_pdrop=Dropouts.of(dropout).resid, embd_pdrop=Dropouts.of(dropout).embd,
        attn_pdrop=Dropouts.of(dropout).attn,
    )
    return GPT2Model._from_config(config, attn_implementation="sdpa")


def _from_config(kind: str, config: Any) -> nn.Module:
    cls = _hf_class(kind)
    make = cls.from_config if kind == "auto" else cls._from_config
    try:
        return make(config, attn_implementation="sdpa")
    except (ValueError, TypeError):  # a model without an SDPA path (iGPT) runs eager
        return make(config, attn_implementation="eager")


def _load_config(name_or_path: str) -> Any:
    from transformers import AutoConfig

    local = Path(name_or_path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(
            f"model.backbone={name_or_path!r}: {local} has no config.json; give a directory "
            "written by save_pretrained (or raydt pretrain) or a hub id such as 'gpt2'"
        )
    try:
        return AutoConfig.from_pretrained(str(local) if local.exists() else name_or_path)
    except (OSError, ValueError) as exc:
        offline = is_offline()
        raise ConfigError(
            f"model.backbone={name_or_path!r} could not be loaded ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); give a local directory written by save_pretrained"
            + (" (downloads are off: HF_HUB_OFFLINE/RAYDT_OFFLINE)" if offline else "")
        ) from None


def pretrained_backbone(name_or_path: str, dropout: float | Dropouts) -> tuple[Backbone, LoadReport]:
    """Load a pre-trained backbone (hub id or directory) of any supported kind."""
    config = _load_config(name_or_path)
    kind = _kind_of(config.model_type)
    if kind == "clip" and config.model_type == "clip":
        config = config.text_config  # the text tower only
    _set_dropout(config, dropout)
    cls = _hf_class(kind)
    local = Path(name_or_path).expanduser()
    source = str(local) if local.exists() else name_or_path
    kwargs: dict[str, Any] = {"config": config, "output_loading_info": True}
    try:
        hf, info = cls.from_pretrained(source, attn_implementation="sdpa", **kwargs)
    except (ValueError, TypeError):  # no SDPA path (iGPT)
        hf, info = cls.from_pretrained(source, attn_implementation="eager", **kwargs)
    if kind == "auto" and "inputs_embeds" not in _forward_params(hf):
        raise ConfigError(
            f"model.backbone={name_or_path!r}: {type(hf).__name__} does not accept inputs_embeds, "
            "so it cannot read trajectory tokens; use a causal LM such as GPT-2, Llama or GPT-NeoX"
        )
    backbone = _CLASSES[kind](hf)
    names = [n for n, _ in backbone.named_parameters()]
    missing = {f"hf.{k}" for k in info.get("missing_keys", [])}
    report = LoadReport(
        source=name_or_path, kind=kind,
        loaded=[n for n in names if n not in missing],
        new=sorted(missing),
        ignored=sorted(info.get("unexpected_keys", [])),
    )
    return backbone, report


def _forward_params(module: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)


def backbone_from_config(kind: str, config_dict: dict[str, Any]) -> Backbone:
    """An uninitialised backbone of a stored kind and config (for rebuilding checkpoints)."""
    from transformers import AutoConfig

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    return _CLASSES[kind](_from_config(kind, config))


def build_backbone(
    size_dims: tuple[int, int, int],
    backbone: str,
    dropout: float | Dropouts,
    activation: str,
    n_tokens: int,
    replace_block: int | None = None,
) -> tuple[Backbone, LoadReport]:
    """The backbone a model config asks for (attending over ``n_tokens``), with its load report.

    With ``replace_block = i``, the architecture of ``backbone`` is freshly initialised and
    only block i keeps its pre-trained weights (Takagi §5.6.1).
    """
    if backbone == "random":
        if replace_block is not None:
            raise ConfigError("model.replace_block needs a pre-trained model.backbone to take the block from")
        hf = random_gpt2(*size_dims, dropout=dropout, activation=activation, n_positions=max(1024, n_tokens))
        model: Backbone = GPT2Backbone(hf)
        report = LoadReport("random", kind="gpt2", new=[n for n, _ in model.named_parameters()])
    else:
        model, report = pretrained_backbone(backbone, dropout)
        if replace_block is not None:
            model, report = _replace_block(model, replace_block, backbone)
    model.switch_off_positions(report, n_tokens)
    # The token table serves text only (λ1's clusters, λ2's inputs and tied head); the
    # trainer turns it back on when λ2 co-training updates it.
    model.token_embeddings.weight.requires_grad_(False)
    return model, report


def _replace_block(pretrained: Backbone, index: int, source: str) -> tuple[Backbone, LoadReport]:
    n = len(pretrained.blocks)
    if not 0 <= index < n:
        raise ConfigError(f"model.replace_block={index}: {source} has blocks 0..{n - 1}")
    fresh = type(pretrained)(_from_config(pretrained.kind, pretrained.config))
    fresh.blocks[index].load_state_dict(pretrained.blocks[index].state_dict())
    prefix = f"hf.{_block_prefix(fresh, index)}."
    names = [name for name, _ in fresh.named_parameters()]
    report = LoadReport(
        source=f"{source} (block {index} only)", kind=pretrained.kind,
        loaded=[x for x in names if x.startswith(prefix)],
        new=[x for x in names if not x.startswith(prefix)],
    )
    return fresh, report


def _block_prefix(model: Backbone, index: int) -> str:
    target = model.blocks[index]
    for name, module in model.hf.named_modules():
        if module is target:
            return name
    raise AssertionError("block not found")  # blocks always come from hf's modules


def freeze(backbone: Backbone, mode: str) -> list[str]:
    """Freeze the backbone's parameters as ``model.freeze`` asks; returns the frozen names."""
    if mode == "none":
        return []
    keep = backbone.norm_parameter_names() if mode == "backbone_except_layernorm" else set()
    frozen = []
    for name, param in backbone.named_parameters():
        if name not in keep:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
