"""train.compile: which mode each setting and device gets, and a compiled training step
computing what the eager step computes."""

from __future__ import annotations

import pytest
import torch

from raydt.precision import compile_mode
from tests.helpers import quiet, tiny_config


def test_auto_is_eager_on_cpus_and_follows_the_measured_table_on_cuda():
    assert compile_mode("auto", "cpu", 10**6, wins_up_to=10**9)[0] is None  # measured slower on CPUs
    assert compile_mode("auto", "cuda", 10**6, wins_up_to=None)[0] is None  # nothing measured yet
    assert compile_mode("auto", "cuda", 10**6, wins_up_to=3 * 10**6)[0] == "reduce-overhead"
    assert compile_mode("auto", "cuda", 10**8, wins_up_to=3 * 10**6)[0] is None  # past what was measured
    assert compile_mode("auto", "cuda", 10**6, wins_up_to=3 * 10**6, world_size=2)[0] is None  # DDP: not measured
    assert compile_mode(False, "cuda", 10)[0] is None
    assert compile_mode(True, "cpu", 10)[0] == compile_mode("default", "cpu", 10)[0] == "default"
    assert compile_mode("reduce-overhead", "cpu", 10)[0] == "reduce-overhead"


def test_compile_setting_reads_booleans_and_modes_and_refuses_others():
    from raydt.errors import ConfigError

    assert tiny_config("train.compile=false").train.compile is False
    assert tiny_config("train.compile=true").train.compile is True
    assert tiny_config().train.compile == "auto"
    assert tiny_config("train.compile=reduce-overhead").train.compile == "reduce-overhead"
    with pytest.raises(ConfigError, match="train.compile"):
        tiny_config("train.compile=fast")


@pytest.mark.slow
def test_a_compiled_step_gives_the_eager_steps_losses(tmp_path):
    # λ1 changes every step while it decays: compiled, the forward must not depend on it
    # (no recompilation per step), so the weights are applied outside the compiled graph.
    from raydt.train.loop import Trainer
    from tests.model.test_backbone import save_tiny

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    extra = [f"model.backbone={save_tiny('gpt2', tmp_path)}", "loss.lambda1=0.1", "loss.kmeans_clusters=8",
             "train.precision=fp32", "model.dropout=0.0"]
    runs = {}
    for mode in ("false", "default"):
        trainer = Trainer(tiny_config(f"train.compile={mode}", *extra), tmp_path / mode, quiet())
        batch = trainer.sampler.sample(8)
        runs[mode] = [trainer.train_step(batch, lambda1=0.1)]
        with torch._dynamo.config.patch(error_on_recompile=True):  # a new λ every step: no new graph
            runs[mode] += [trainer.train_step(batch, lambda1=l1) for l1 in (0.05, 0.025)]
        if mode == "default":
            assert type(trainer.module).__name__ == "OptimizedModule"
    for eager, compiled in zip(runs["false"], runs["default"]):
        assert set(eager) == set(compiled)
        for name in eager:
            torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
