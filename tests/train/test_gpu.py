"""The GPU path on a real CUDA device (`pytest -m gpu`; skipped where there is none).

The same device-specific state the CPU tests simulate (tests/train/test_devices.py), here with the
device itself: resume on CUDA, checkpoints moved between CPU and GPU, bf16 autocast, the
pinned-memory frame sampler, the prebuilt attention mask, evaluation of a saved run.
"""

from __future__ import annotations

import pytest
import torch

from raydt.train.checkpoint import load_checkpoint
from raydt.train.loop import RunContext, fit
from tests.helpers import tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_ctx() -> RunContext:
    return RunContext(device=torch.device("cuda", 0), log=lambda _: None)


def test_a_run_resumes_on_the_gpu(tmp_path):
    fit(tiny_config("train.steps=4", "resources.use_gpu=true"), tmp_path, cuda_ctx())
    out = fit(tiny_config("train.steps=8", "resources.use_gpu=true"), tmp_path, cuda_ctx(), resume=True)
    assert out["step"] == 8
    payload = load_checkpoint(tmp_path)
    assert payload["sampler_rng"].numel() == 16  # a CUDA generator's state
    assert payload["rng"]["torch"].device.type == "cpu"


@pytest.mark.parametrize("first,then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_moves_between_cpu_and_gpu(tmp_path, first, then):
    ctx = {"cpu": RunContext(log=lambda _: None), "cuda": cuda_ctx()}
    fit(tiny_config("train.steps=4"), tmp_path, ctx[first])
    lines: list[str] = []
    moved = RunContext(device=ctx[then].device, log=lines.append)
    assert fit(tiny_config("train.steps=8"), tmp_path, moved, resume=True)["step"] == 8
    assert any("window sampler" in line for line in lines)  # said, not failed


def test_bf16_training_on_the_gpu_keeps_losses_fp32(tmp_path):
    out = fit(tiny_config("train.steps=4", "train.precision=bf16"), tmp_path, cuda_ctx())
    assert out["step"] == 4 and out["train/loss"] == out["train/loss"]  # finite


def test_evaluate_checkpoint_on_the_gpu(tmp_path):
    from raydt.eval.saved import evaluate_checkpoint

    fit(tiny_config("train.steps=4"), tmp_path, cuda_ctx())
    metrics = evaluate_checkpoint(tmp_path, episodes=2, device="cuda", log=lambda _: None)
    assert metrics["step"] == 4 and "eval/return_mean" in metrics


def test_prebuilt_mask_matches_hugging_face_on_the_gpu():
    from raydt.config import ModelConfig
    from raydt.model.build import build_model

    model, _ = build_model(ModelConfig(n_embd=64, n_head=2, n_layer=2, dropout=0.0), 5, 2, 8, 100, log=lambda _: None)
    backbone = model.backbone.cuda().eval()
    x = torch.randn(4, 24, 64, device="cuda")
    mask = torch.ones(4, 24, dtype=torch.bool, device="cuda")
    mask[1, :5] = False
    with torch.no_grad():
        ours = backbone(x, mask)
        theirs = backbone.hf(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)


def test_pinned_prefetching_frame_sampler_gives_the_cpu_batches():
    from raydt.data.atari import generated_atari_dir, parse_atari
    from raydt.data.dqn_replay import read_dqn_replay
    from raydt.data.sampler import FrameWindowSampler

    data = read_dqn_replay(generated_atari_dir(parse_atari("atari-pong?steps=600&seed=1"), log=lambda _: None).parent,
                           num_steps=10**6, log=lambda _: None)
    cpu = FrameWindowSampler(data, context_length=4, seed=3)
    gpu = FrameWindowSampler(data, context_length=4, seed=3, device="cuda")
    assert gpu.prefetch and not cpu.prefetch
    for _ in range(3):
        a, b = cpu.sample(8), gpu.sample(8)
        assert all(torch.equal(x, y.cpu()) for x, y in zip(a, b))
