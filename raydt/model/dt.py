"""The Decision Transformer (Chen et al. 2021) over a GPT-2-family backbone.

Follows ``gym/decision_transformer/models/decision_transformer.py`` of the original code:
linear embeddings of return-to-go, state and action, a learned timestep embedding added to
each, tokens interleaved as (R̂_1, s_1, a_1, R̂_2, …), one LayerNorm, a causal transformer,
and the action read from each state token's hidden state (tanh for continuous actions).
Pure PyTorch: no I/O, no logging.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from raydt.model.backbone import Backbone, LoadReport, backbone_from_config


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to rebuild a model from a checkpoint (stored beside its weights)."""

    obs_dim: int
    act_dim: int
    n_embd: int
    context_length: int
    max_timestep: int
    """Size of the timestep table; later steps reuse the last entry."""
    backbone_source: str
    """'random' or the hub id / directory the backbone weights first came from."""
    backbone_config: dict[str, Any] = field(default_factory=dict)
    """The backbone's Hugging Face config, so a checkpoint rebuilds it without the source."""
    backbone_kind: str = "gpt2"
    """Which :class:`raydt.model.backbone.Backbone` wraps it: gpt2, imagegpt, clip or auto."""
    discrete_actions: bool = False
    """Actions are ids in [0, act_dim): embedded by a table, predicted as logits (Atari)."""
    frame_stack: int = 0
    """0: states are (obs_dim,) vectors; > 0: stacks of this many 84×84 frames through a CNN."""
    ln_order: str = "time_then_ln"
    """time_then_ln: LN(token + time) (original DT); ln_then_time: LN(token) + time (Reid's code)."""
    action_head: str = "linear"
    """linear: its own Linear + tanh; tied: tanh(h·W) with the action embedding's weight W (Reid's run.sh)."""
    time_embedding: str = "per_step"
    """per_step: each step's timestep table row; global_local: the window's first timestep + a per-token position (DT Atari)."""
    embed_tanh: bool = False
    """tanh on the return and action embeddings (DT Atari)."""
    embed_ln: bool = True
    """LayerNorm on the input tokens (DT Atari has none)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NatureCNN(nn.Module):
    """The Nature-DQN encoder (Mnih et al. 2015) as in DT's Atari model: 3 convolutions and
    a linear layer with tanh, on frames scaled to [0, 1]."""

    def __init__(self, frames: int, h: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(frames, 32, 8, stride=4), nn.ReLU(),  # (·, 32, 20, 20)
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),  # (·, 64, 9, 9)
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),  # (·, 64, 7, 7)
            nn.Flatten(), nn.Linear(3136, h), nn.Tanh(),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states (B, K, frames, 84, 84) uint8 → (B, K, h)."""
        b, k = states.shape[:2]
        x = states.reshape(b * k, *states.shape[2:]).to(self.net[0].weight.dtype) / 255.0
        return self.net(x).reshape(b, k, -1)


class TiedActionHead(nn.Module):
    """tanh(x·W) with W (h, act) the action embedding's weight and no bias: the output
    projection shares the input one (``--share_input_output_proj`` of Reid's run.sh)."""

    def __init__(self, embed_action: nn.Linear) -> None:
        super().__init__()
        # Held outside the module tree: the weight belongs to (and is saved with) embed_action.
        self._embed = [embed_action]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., h) → actions (..., act) in [-1, 1]."""
        return torch.tanh(x @ self._embed[0].weight)  # (h, act) weight of Linear(act, h)


class DecisionTransformer(nn.Module):
    """Predicts a_t from (R̂, s, a) tokens up to s_t."""

    def __init__(self, args: ModelArgs, backbone: Backbone) -> None:
        super().__init__()
        self.args = args
        h = args.n_embd
        self.embed_timestep = nn.Embedding(args.max_timestep, h)
        self.embed_return = nn.Linear(1, h)
        self.embed_state = NatureCNN(args.frame_stack, h) if args.frame_stack else nn.Linear(args.obs_dim, h)
        self.embed_action = nn.Embedding(args.act_dim, h) if args.discrete_actions else nn.Linear(args.act_dim, h)
        # DT Atari's embeddings: tanh on returns and actions, no LayerNorm, and a learned
        # position per token of the window (zeros at first) beside the global timestep.
        self.embed_ln = nn.LayerNorm(h) if args.embed_ln else nn.Identity()
        if args.time_embedding == "global_local":
            self.local_position = nn.Parameter(torch.zeros(1, 3 * args.context_length, h))
        self.backbone = backbone
        # Discrete actions: logits for a cross-entropy loss; continuous: tanh into [-1, 1].
        if args.action_head == "tied":
            self.predict_action: nn.Module = TiedActionHead(self.embed_action)
        else:
            self.predict_action = (nn.Linear(h, args.act_dim) if args.discrete_actions
                                   else nn.Sequential(nn.Linear(h, args.act_dim), nn.Tanh()))

    def embed(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
        state_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings fed to the backbone and their attention mask.

        states (B, K, obs) or (B, K, frames, 84, 84) uint8, actions (B, K, act) or (B, K) ids,
        returns_to_go (B, K, 1), timesteps (B, K), mask (B, K) → embeddings (B, 3K, h), mask (B, 3K).
        ``state_tokens`` (B, K, h): ``embed_state(states)`` computed earlier (an evaluator
        encodes each new frame stack once); ``states`` is then ignored.
        """
        tokens, _ = self._embed(states, actions, returns_to_go, timesteps, mask, state_tokens)
        return tokens, mask.repeat_interleave(3, dim=1)  # (B, 3K, h), (B, 3K)

    def embed_untimed(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`embed`, plus LN(token) without the timestep (B, 3K, h): what Reid's
        released λ1 loss compares with the clusters (``all_embs``)."""
        tokens, untimed = self._embed(states, actions, returns_to_go, timesteps, mask, None, untimed=True)
        return tokens, mask.repeat_interleave(3, dim=1), untimed

    def _embed(self, states, actions, returns_to_go, timesteps, mask, state_tokens, untimed: bool = False):
        """(tokens fed to the backbone (B, 3K, h), LN(token) without the timestep or None)."""
        b, k = timesteps.shape
        timesteps = timesteps.clamp(max=self.args.max_timestep - 1)
        # Returns-to-go in fp32 even under bf16 autocast: bf16 keeps 8 significant bits, so
        # Atari's unscaled targets 13990, 14000 and 14025 would all become 14016.
        with torch.autocast(returns_to_go.device.type, enabled=False):
            r = self.embed_return(returns_to_go.to(self.embed_return.weight.dtype))  # (B, K, h)
        s = self.embed_state(states) if state_tokens is None else state_tokens  # (B, K, h)
        a = self.embed_action(actions)  # (B, K, h)
        if self.args.embed_tanh:
            r, a = torch.tanh(r), torch.tanh(a)
        # Interleave per step: (B, K, 3, h) → (B, 3K, h) = R̂_1, s_1, a_1, R̂_2, ...
        raw = torch.stack((r, s, a), dim=2).reshape(b, 3 * k, self.args.n_embd)
        if self.args.time_embedding == "global_local":
            # DT Atari: one timestep per window, its first real step's, plus a learned
            # position per token counted from that step (raydt left-pads: shift by the pad).
            first = timesteps.gather(1, mask.long().argmax(dim=1, keepdim=True))  # (B, 1)
            pad = 3 * (k - mask.sum(dim=1, keepdim=True))  # (B, 1) padded tokens
            local = (torch.arange(3 * k, device=timesteps.device)[None, :] - pad).clamp(min=0)  # (B, 3K)
            time = self.embed_timestep(first) + self.local_position[0, local]  # (B, 3K, h)
        else:
            time = self.embed_timestep(timesteps).repeat_interleave(3, dim=1)  # (B, 3K, h)
        if self.args.ln_order == "ln_then_time":
            # Reid's code: LN(token), then the timestep (or the LM's positions) added as
            # GPT-2 adds its own positions.
            normed = self.embed_ln(raw)
            return normed + time, normed
        tokens = self.embed_ln(raw + time)  # the original DT: LN(token + timestep)
        return tokens, (self.embed_ln(raw) if untimed else None)

    def predict(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Embedded tokens (B, 3K, h) and their mask (B, 3K) → predicted actions (B, K, act)."""
        b, t, h = tokens.shape
        hidden = self.backbone(tokens, token_mask)  # (B, 3K, h)
        hidden = hidden.reshape(b, t // 3, 3, h)  # (B, K, 3, h)
        return self.predict_action(hidden[:, :, 1])  # (B, K, act) from s_t tokens

    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Predicted actions (B, K, act), one per step, each from its state token."""
        return self.predict(*self.embed(states, actions, returns_to_go, timesteps, mask))


def extend_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """``table`` (P, D) as a (rows, D) timestep table, as Reid's ``--extend_positions`` makes it.

    Episodes up to P steps take rows 0..rows-1 as they are. Longer ones keep rows 0 and 1 and
    tile rows 2..P-1 after them: timestep t ≥ 2 takes row 2 + (t − 2) mod (P − 2)
    (released code: decision_transformer.py, L78-L93 at 0f86702). Every row is a trained
    position; CLIP's 77 rows and a short laptop ChibiT's are extended this way.
    """
    p = table.shape[0]
    if rows <= p:
        return table[:rows].clone()
    t = torch.arange(rows, device=table.device)
    index = torch.where(t < 2, t, 2 + (t - 2) % max(p - 2, 1)) if p > 2 else t % p
    return table[index].clone()


def rebuild_model(args: ModelArgs) -> DecisionTransformer:
    """An uninitialised-weights twin of a saved model, ready for ``load_state_dict``."""
    backbone = backbone_from_config(args.backbone_kind, args.backbone_config)
    backbone.switch_off_positions(LoadReport(args.backbone_source), 3 * args.context_length)
    return DecisionTransformer(args, backbone)
