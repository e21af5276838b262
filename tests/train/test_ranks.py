"""Two DDP ranks in two gloo processes, without Ray: each rank draws its own dropout masks,
and a resumed rank continues its own random streams."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import random_batch, tiny_config

TWO_RANKS = ("model.dropout=0.3", "train.steps=8", "train.eval_every=4", "resources.num_workers=2")


def _rank(rank: int, init: str, run_dir: str, out: str, data_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["RAYDT_DATA_DIR"] = data_dir
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    from raydt.data.sampler import Batch
    from raydt.train.loop import RunContext, Trainer

    ctx = RunContext(rank=rank, world_size=2, log=lambda _: None)
    try:
        trainer = Trainer(tiny_config(*TWO_RANKS), Path(run_dir), ctx)
        # The same batch on both ranks, drawn from its own generator (the global streams
        # are what is tested): with equal weights, a different output is a different mask.
        obs, act = trainer.model.args.obs_dim, trainer.model.args.act_dim
        batch = Batch(**random_batch(b=2, k=5, obs_dim=obs, act_dim=act, seed=7))
        with torch.no_grad():
            pred = trainer.objective(batch, None)["action"]
        # Rank 0's constants (λ1 centres, text positions) reach every rank.
        trainer.objective.centers = torch.full((3, 4), float(rank + 1))
        trainer._share_constants()
        centers = trainer.objective.centers.tolist()
        trainer.objective.centers = None
        trainer.fit()
        after_fit = torch.rand(6).tolist()  # the streams as the last checkpoint holds them
        resumed = Trainer(tiny_config(*TWO_RANKS), Path(run_dir), ctx)
        resumed.fit(resume=True)  # at the last step already: restores, and stops
        after_resume = torch.rand(6).tolist()
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"loss": float(pred), "after_fit": after_fit, "after_resume": after_resume, "centers": centers}))
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_each_rank_draws_its_own_dropout_masks_and_resumes_its_own_streams(tmp_path):
    (tmp_path / "out").mkdir()
    mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "run"), str(tmp_path / "out"),
                          os.environ["RAYDT_DATA_DIR"]), nprocs=2)
    r0, r1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["loss"] != r1["loss"]  # equal weights, equal batch: different dropout masks
    assert r0["after_fit"] != r1["after_fit"]
    assert r0["centers"] == r1["centers"] == [[1.0] * 4] * 3
    # Each rank continues exactly the stream it left, not rank 0's.
    assert r0["after_resume"] == r0["after_fit"]
    assert r1["after_resume"] == r1["after_fit"]
    from raydt.train.checkpoint import load_checkpoint

    assert len(load_checkpoint(tmp_path / "run")["rank_states"]) == 2


def _wait_past_timeout(rank: int, init: str, out: str) -> None:
    from datetime import timedelta

    from raydt.errors import EvalTimeout
    from raydt.train.loop import agree_with_rank0

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=2))
    try:
        if rank == 0:
            import time

            time.sleep(5)  # an evaluation that overruns what the others wait
            return
        try:
            agree_with_rank0(False, group, waiting_for="rank 0's evaluation at step 4", timeout_s=2)
        except EvalTimeout as exc:
            Path(out).write_text(str(exc))
    finally:
        dist.destroy_process_group()


def test_a_wait_past_the_evaluation_timeout_is_a_permanent_error(tmp_path):
    mp.spawn(_wait_past_timeout, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "error.txt")), nprocs=2)
    message = (tmp_path / "error.txt").read_text()
    assert "rank 1 waited" in message and "evaluation at step 4" in message and "eval.timeout_s" in message


def test_rank0_names_its_own_overrun(tmp_path, monkeypatch):
    import time

    import pytest

    from raydt.errors import EvalTimeout
    from raydt.train import loop
    from raydt.train.loop import RunContext, Trainer

    trainer = Trainer(tiny_config("eval.timeout_s=1"), tmp_path, RunContext(log=lambda _: None))
    monkeypatch.setattr(trainer, "evaluate", lambda: time.sleep(1.2) or {"eval/return_mean": 1.0})
    trainer.ctx.world_size = 1
    assert trainer._evaluate_and_track({}) is False  # one worker: nobody waits, no limit
    trainer.ctx.world_size = 2  # dist is not initialised: agree_with_rank0 returns rank 0's flag
    with pytest.raises(EvalTimeout, match="took 1 s, more than eval.timeout_s=1"):
        trainer._evaluate_and_track({})
    assert loop.EVAL_TIMEOUT_GRACE_S > 0


def test_eval_timeout_is_permanent_unless_rank0_was_lost():
    from raydt.errors import EvalTimeout
    from raydt.train.worker import permanent_failure

    class GroupError(Exception):
        def __init__(self, failures):
            self.worker_failures = failures

    overran = EvalTimeout("rank 1 waited")
    assert permanent_failure(GroupError({1: overran})) is overran
    assert permanent_failure(GroupError({0: EvalTimeout("took"), 1: RuntimeError("peer closed")})) is not None
    # rank 0's process died (a lost node): the others' timeout follows from it; retry
    assert permanent_failure(GroupError({0: RuntimeError("actor died"), 1: overran})) is None


def test_gloo_binds_to_the_interface_of_the_ray_node_ip(monkeypatch):
    from raydt.train.worker import bind_gloo_to, interface_of

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    loopback = interface_of("127.0.0.1")
    assert loopback is not None and interface_of("203.0.113.9") is None  # TEST-NET-3: on no interface
    assert bind_gloo_to("127.0.0.1") == loopback and os.environ["GLOO_SOCKET_IFNAME"] == loopback
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")  # the user's own choice stands
    assert bind_gloo_to("127.0.0.1") is None and os.environ["GLOO_SOCKET_IFNAME"] == "eth7"
