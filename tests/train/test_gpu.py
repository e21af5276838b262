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
    from raydt.data.feed import CudaCopies

    assert isinstance(gpu._feeder.copies, CudaCopies)
    assert gpu._feeder._host[0]["states"].is_pinned()  # the reused buffers are page-locked


@pytest.mark.parametrize("kind", ["gpt2", "imagegpt", "clip"])
def test_backbone_forwards_never_sync_the_gpu(tmp_path, kind):
    from raydt.config import ModelConfig
    from raydt.model.build import build_model
    from tests.model.test_backbone import save_tiny

    model, _ = build_model(ModelConfig(backbone=str(save_tiny(kind, tmp_path))), 5, 2, 6, 100, log=lambda _: None)
    backbone = model.backbone.cuda()
    x = torch.randn(3, 12, 32, device="cuda")
    mask = torch.ones(3, 12, dtype=torch.bool, device="cuda")
    mask[1, :4] = False
    backbone(x, mask)  # first call: lazy initialisation may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        backbone(x, mask).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_gpu_rollout_and_its_cpu_twin_take_the_same_episodes():
    import numpy as np

    from raydt.eval.rollout import rollout
    from tests.helpers import tiny_model

    model = tiny_model(context_length=4, obs_dim=11, act_dim=3, seed=3).double()
    args = ("Hopper-v4", 3600, [11, 12, 13], np.zeros(11), np.ones(11), 1e-3)
    on_cpu = rollout(model, *args, max_steps=60)
    on_gpu = rollout(model.cuda(), *args, device="cuda", max_steps=60)
    np.testing.assert_array_equal(on_gpu.lengths, on_cpu.lengths)
    np.testing.assert_allclose(on_gpu.returns, on_cpu.returns, rtol=1e-6)


def test_cuda_graphs_step_gives_the_eager_losses(tmp_path):
    from raydt.train.loop import Trainer

    runs = {}
    for mode in ("false", "reduce-overhead"):
        trainer = Trainer(tiny_config(f"train.compile={mode}", "train.precision=fp32", "model.dropout=0.0",
                                      "resources.use_gpu=true"), tmp_path / mode, cuda_ctx())
        batch = trainer.sampler.sample(8)
        runs[mode] = [float(trainer.train_step(batch)["action"]) for _ in range(6)]  # graphs captured by step 3
    assert runs["reduce-overhead"] == pytest.approx(runs["false"], rel=1e-4)
