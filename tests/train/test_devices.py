"""Device-specific state on the CPU: what a GPU run saves, resumes and computes, with the
device's part simulated where a real device is not needed (RNG states of other device
counts, CUDA generator states, bf16 autocast, collectives that wait for an evaluation)."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp

from raydt.train.checkpoint import load_checkpoint, restore_generator, rng_state, set_rng_state
from raydt.train.loop import RunContext, Trainer, cpu_has_native_bf16, fit, use_bf16
from tests.helpers import quiet, random_batch, tiny_config, tiny_model


def test_resume_reads_the_checkpoint_onto_the_cpu_whatever_the_device(tmp_path, monkeypatch):
    # Read onto a GPU, the checkpoint's CPU RNG state would reach torch.set_rng_state as a
    # CUDA tensor (TypeError): every resume, worker-group restart and pretrain resume.
    fit(tiny_config("train.steps=4"), tmp_path, quiet())
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("map_location")) or real(*a, **k))
    out = fit(tiny_config("train.steps=8"), tmp_path, quiet(), resume=True)
    assert out["step"] == 8 and seen == ["cpu"]


def fake_cuda(monkeypatch, devices: int) -> list[int]:
    """This process sees ``devices`` CUDA devices: setting the RNG state of any other index
    fails as it does on a real machine (IndexError)."""
    restored: list[int] = []

    def set_state(state, device=0):
        if not 0 <= int(device) < devices:
            raise IndexError(f"CUDA device {device} does not exist")
        assert state.device.type == "cpu" and state.dtype == torch.uint8
        restored.append(int(device))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_state)  # what set_rng_state_all calls
    return restored


def test_a_checkpoint_from_four_gpus_resumes_on_one(monkeypatch):
    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8) for _ in range(4)]
    restored = fake_cuda(monkeypatch, devices=1)
    notes = set_rng_state(state)
    assert restored == [0]
    assert notes and "holds 4 CUDA RNG states" in notes[0] and "restored 1" in notes[0]


def test_a_cpu_checkpoint_resumes_on_gpus_and_says_so(monkeypatch):
    restored = fake_cuda(monkeypatch, devices=2)
    notes = set_rng_state(rng_state())  # saved where no CUDA device was visible
    assert restored == [] and "devices 0..1 keep their seeded state" in notes[0]


def test_a_gpu_sampler_state_resumes_on_a_cpu_generator():
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # a CUDA Philox generator's state: seed + offset
    g = torch.Generator().manual_seed(3)
    note = restore_generator(g, cuda_state, reseed=11, what="window sampler")
    assert "CUDA generator" in note and "seeded 11" in note
    assert torch.equal(torch.randint(100, (5,), generator=g),
                       torch.randint(100, (5,), generator=torch.Generator().manual_seed(11)))
    saved = torch.Generator().manual_seed(5).get_state()
    assert restore_generator(g, saved, reseed=11, what="window sampler") is None
    assert torch.equal(g.get_state(), saved)


def test_a_trainer_resumes_a_checkpoint_written_on_a_gpu(tmp_path):
    fit(tiny_config("train.steps=4"), tmp_path, quiet())
    payload = load_checkpoint(tmp_path)
    own = payload["rank_states"][0]  # rank 0's streams, as a CUDA worker saved them
    own["sampler_rng"] = torch.zeros(16, dtype=torch.uint8)
    own["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    trainer = Trainer(tiny_config("train.steps=8"), tmp_path, quiet())
    notes = trainer.restore(payload)
    assert trainer.step == 4
    assert any("window sampler" in n for n in notes) and any("CUDA RNG states" in n for n in notes)


def test_a_saved_run_evaluates_from_cpu_statistics_whatever_the_model_device(tmp_path):
    from raydt.eval.saved import load_model

    fit(tiny_config("train.steps=4"), tmp_path, quiet())
    # "meta" stands for any device that is not the CPU: its tensors have no NumPy view.
    model, payload = load_model(tmp_path, device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert payload["state_mean"].numpy().shape == (11,)


# --------------------------------------------------------------------------------------
# bf16


def test_bf16_keeps_returns_to_go_and_the_losses_in_fp32():
    model = tiny_model().eval()
    batch = random_batch(b=1, k=3)
    batch["returns_to_go"] = torch.tensor([13990.0, 14000.0, 14025.0]).reshape(1, 3, 1)  # Atari's targets
    batch["timesteps"][:] = 7  # the same step: only the return tells the three R̂ tokens apart
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, _ = model.embed(**batch)
    returns = tokens[0, 0::3].float()  # (3, h): the R̂ tokens
    # In bf16 all three targets round to 14016: three identical tokens.
    assert not torch.equal(returns[0], returns[1]) and not torch.equal(returns[1], returns[2])
    plain, _ = model.embed(**batch)
    torch.testing.assert_close(returns, plain[0, 0::3], atol=1e-5, rtol=1e-5)

    from raydt.data.sampler import Batch
    from raydt.losses import cosine_cluster_loss
    from raydt.train.loop import Objective

    centers = torch.nn.functional.normalize(torch.randn(7, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    objective = Objective(model, centers, "paper")
    b = Batch(**random_batch(b=2, k=6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(b, None)
        tokens, mask = model.embed(b.states, b.actions, b.returns_to_go, b.timesteps, b.mask)
    reference = cosine_cluster_loss(tokens.float(), centers, mask, "paper")  # fp32, outside autocast
    assert out["cos"].dtype == torch.float32
    torch.testing.assert_close(out["cos"], reference, atol=1e-6, rtol=1e-6)


def test_precision_auto_chooses_bf16_by_compute_capability():
    assert use_bf16("auto", "cuda", (8, 0)) and use_bf16("auto", "cuda", (9, 0))  # A100, H100
    assert not use_bf16("auto", "cuda", (7, 5)) and not use_bf16("auto", "cuda", (7, 0))  # T4, V100
    assert use_bf16("bf16", "cpu") and not use_bf16("fp32", "cuda", (9, 0)) and not use_bf16("fp32", "cpu", cpu_bf16=True)
    # CPUs: auto follows the hardware's bf16 instructions
    assert use_bf16("auto", "cpu", cpu_bf16=True) and not use_bf16("auto", "cpu", cpu_bf16=False)
    assert use_bf16("auto", "cpu") == cpu_has_native_bf16()


# --------------------------------------------------------------------------------------
# DDP: ranks wait for rank 0's evaluation; one resume decision


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, run_dir: str, env: dict) -> None:
    os.environ.update(env)
    import torch.distributed as dist

    from raydt.train.loop import agree_with_rank0

    # The default group times out after 2 s, far less than rank 0's evaluation below: as
    # NCCL's 30 minutes are less than a long Atari evaluation.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=2))
    try:
        assert agree_with_rank0(rank == 0) is True  # rank 0's decision on every rank
        config = tiny_config("train.steps=4", "train.eval_every=4", "eval.timeout_s=120")
        trainer = Trainer(config, Path(run_dir), RunContext(rank=rank, world_size=world, log=lambda _: None))
        if rank == 0:
            evaluate = trainer.evaluate
            trainer.evaluate = lambda: (time.sleep(5), evaluate())[1]
        assert trainer.fit()["step"] == 4
    finally:
        dist.destroy_process_group()


def test_ranks_wait_for_a_long_evaluation_past_the_default_group_timeout(tmp_path):
    fit(tiny_config("train.steps=2", "train.eval_every=2"), tmp_path / "warm", quiet())  # makes the dataset once
    env = {k: os.environ[k] for k in ("RAYDT_DATA_DIR", "RAYDT_OFFLINE", "OMP_NUM_THREADS") if k in os.environ}
    mp.start_processes(_ddp_rank, args=(2, _free_port(), str(tmp_path / "run"), env), nprocs=2,
                       start_method="spawn", join=True)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_gpus_get_fused_adamw_and_cpus_the_default():
    from raydt.train.loop import optimizer_options

    assert optimizer_options("cuda") == {"fused": True}
    assert optimizer_options("cpu") == {}


def test_a_shared_gpu_bounds_its_memory_and_names_an_out_of_memory_error():
    from raydt.train.loop import bound_gpu_memory, out_of_memory

    calls = []
    assert bound_gpu_memory(0.25, torch.device("cuda", 0), lambda share, device: calls.append((share, device)))
    assert calls == [(0.25, torch.device("cuda", 0))]
    assert not bound_gpu_memory(1.0, torch.device("cuda", 0), calls.append)  # a whole GPU: no cap
    assert not bound_gpu_memory(0.25, torch.device("cpu"), calls.append)
    assert len(calls) == 1
    error = out_of_memory(tiny_config("resources.use_gpu=true", "resources.gpus_per_worker=0.25"),
                          torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "share of the GPU (resources.gpus_per_worker=0.25)" in str(error)
    assert "raise resources.gpus_per_worker" in str(error) and "Tried to allocate 2.00 GiB" in str(error)
