"""The evaluator's packed inference path computes what the model computes."""

import pytest
import torch

from raydt.config import ModelConfig
from raydt.model.build import build_model
from raydt.model.inference import ActionPolicy, PackedLinear, packed_for_inference


def windows(b=4, k=6, obs=5, act=2, pad=(0, 2, 5, 3)):
    g = torch.Generator().manual_seed(0)
    s, a, r = torch.randn(b, k, obs, generator=g), torch.randn(b, k, act, generator=g), torch.randn(b, k, 1, generator=g)
    t = torch.randint(0, 50, (b, k), generator=g)
    mask = torch.arange(k)[None, :] >= torch.tensor(pad)[:, None]  # left padding, ≥ 1 real step
    return s, a, r, t, mask


@pytest.mark.parametrize("activation,reid", [("relu", False), ("gelu_new", False), ("relu", True)])
def test_action_policy_matches_the_model(activation, reid):
    torch.manual_seed(0)
    # reid: Reid's released architecture (LN before the timestep, the tied action head)
    extra = {"ln_order": "ln_then_time", "action_head": "tied"} if reid else {}
    model, _ = build_model(ModelConfig(n_embd=32, n_head=4, n_layer=3, activation=activation, **extra), 5, 2, 6, 50)
    model.eval()
    policy = ActionPolicy(model, rows_hint=4 * 18)
    assert policy.layers is not None  # the GPT-2 fast path, not the fallback
    for mask in (windows()[4], torch.ones(4, 6, dtype=torch.bool)):
        s, a, r, t, _ = windows()
        with torch.no_grad():
            expected = model(s, a, r, t, mask)[:, -1]  # (B, act)
        torch.testing.assert_close(policy(s, a, r, t, mask), expected, atol=1e-5, rtol=1e-5)
    # The last action token is a placeholder the prediction must not depend on.
    s, a, r, t, mask = windows()
    a2 = a.clone()
    a2[:, -1] += 100.0
    torch.testing.assert_close(policy(s, a2, r, t, mask), policy(s, a, r, t, mask))
    # A copy: training the model afterwards does not change the policy's weights.
    before = policy(s, a, r, t, mask)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(policy(s, a, r, t, mask), before)


def test_packed_linear_and_fallbacks():
    lin = torch.nn.Linear(7, 3)
    packed = PackedLinear(lin.weight, lin.bias, rows_hint=8)
    x = torch.randn(2, 4, 7)
    torch.testing.assert_close(packed(x), lin(x).detach(), atol=1e-6, rtol=1e-6)
    relu = PackedLinear(lin.weight, lin.bias, rows_hint=8, fused="relu")
    torch.testing.assert_close(relu(x), torch.relu(lin(x)).detach(), atol=1e-6, rtol=1e-6)
    model, _ = build_model(ModelConfig(n_embd=16, n_head=2, n_layer=1), 5, 2, 6, 50)
    double = model.double().eval()
    assert packed_for_inference(double) is double  # fp64 (tests' exact rollouts) is left alone
    policy = ActionPolicy(double)
    assert policy.layers is None
    s, a, r, t, mask = (w.double() if w.is_floating_point() else w for w in windows())
    with torch.no_grad():
        torch.testing.assert_close(policy(s, a, r, t, mask), double(s, a, r, t, mask)[:, -1])


def test_cached_state_tokens_give_the_same_action_logits():
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(n_embd=32, n_head=2, n_layer=2), 0, 6, 3, 50, discrete_actions=True,
                           frame_stack=4)
    model.eval()
    policy = ActionPolicy(model, rows_hint=6)
    g = torch.Generator().manual_seed(1)
    states = torch.randint(0, 256, (2, 3, 4, 84, 84), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 6, (2, 3), generator=g)
    rtg, t = torch.randn(2, 3, 1, generator=g), torch.tensor([[0, 1, 2], [5, 6, 7]])
    mask = torch.tensor([[False, True, True], [True, True, True]])
    with torch.no_grad():
        expected = model(states, actions, rtg, t, mask)[:, -1]  # (B, 6) logits
    tokens = torch.cat([policy.encode_states(states[:, i : i + 1]) for i in range(3)], dim=1)  # one step at a time
    torch.testing.assert_close(policy(None, actions, rtg, t, mask, state_tokens=tokens), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy(states, actions, rtg, t, mask), expected, atol=1e-5, rtol=1e-5)
