"""raydt reproduce: a tiny run trained again matches bit for bit on a CPU; a value, a row or a
version that moved is named exactly; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import math

import pytest

from raydt.cli import main
from raydt.reproduce import GPU_ATOL, GPU_RTOL, compare_metrics
from raydt.rundir import RunDir
from raydt.sinks import read_metrics
from raydt.train.driver import run_training
from tests.helpers import tiny_config

# warmup_cosine decays to the run's last step: a cut that shortened train.steps would change
# every learning rate after the warm-up, and the comparison would see it.
SCHEDULE = ("optim.schedule=warmup_cosine", "optim.min_lr_ratio=0.1")


@pytest.fixture
def tiny_run(tmp_path):
    run = tmp_path / "run"
    run_training(tiny_config(*SCHEDULE), run, use_ray=False, log=lambda _: None)
    return run


def reproduce(capsys, *args: str) -> tuple[int, list[str]]:
    status = main(["reproduce", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out.splitlines() + captured.err.splitlines()


def test_run_info_keeps_its_keys_and_gains_the_record(tiny_run):
    info = RunDir(tiny_run).read_run_info()
    assert {"hostname", "ray_node", "world_size", "device", "resumed_at_step", "artifacts", "torch", "raydt",
            "python"} <= set(info)
    assert info["record"]["packages"]["torch"] == info["torch"] and info["record"]["gpus"] == []
    assert info["record"]["torch_threads"]["intra_op"] == 1  # resources.cpus_per_worker of the tiny run


def test_a_tiny_run_reproduces_bit_for_bit_and_a_tampered_value_is_named(tiny_run, tmp_path, capsys):
    status, out = reproduce(capsys, tiny_run, "--out", tmp_path / "again")
    assert status == 0, out
    assert "MATCH: every metric equal, bit for bit" in out
    assert ("compared 6 row(s), steps 2 to 12, bit for bit; not compared (timings): perf/eval_seconds, "
            "perf/steps_per_second, perf/total_seconds, perf/train_seconds") in out
    assert "versions: the installed ones are those recorded" in out
    assert read_metrics(tmp_path / "again" / "metrics.jsonl")[-1]["train/lr"] == pytest.approx(1e-4 * 0.1)

    # One value of the original, moved by one unit in the last place; and an older torch recorded.
    path = tiny_run / "metrics.jsonl"
    rows = read_metrics(path)
    true_loss = rows[3]["train/loss"]
    rows[3]["train/loss"] = math.nextafter(true_loss, math.inf)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = json.loads((tiny_run / "run_info.json").read_text())
    installed = info["record"]["packages"]["torch"]
    info["record"]["packages"]["torch"] = "1.13.1"
    (tiny_run / "run_info.json").write_text(json.dumps(info))

    status, out = reproduce(capsys, tiny_run, "--out", tmp_path / "tampered", "--steps", "9")
    assert status == 1
    assert (f"MISMATCH at step 8, train/loss: original {math.nextafter(true_loss, math.inf)!r}, "
            f"reproduction {true_loss!r}") in out
    assert f"versions that differ from the run's record (recorded -> installed): torch 1.13.1 -> {installed}" in out
    # --steps 9: trained to step 9 only, on train.steps' schedule; step 9 logs no row.
    assert [r["step"] for r in read_metrics(tmp_path / "tampered" / "metrics.jsonl")] == [2, 4, 6, 8]
    assert read_metrics(tmp_path / "tampered" / "metrics.jsonl")[2]["train/lr"] == rows[2]["train/lr"]


def test_bad_input_is_one_line_and_status_2(tiny_run, tmp_path, capsys):
    cases = [
        ((tmp_path / "nowhere",), f"error: {tmp_path / 'nowhere'}: no such run directory"),
        ((tmp_path,), f"error: {tmp_path} holds no config.resolved.yaml: not a run directory"),
        ((tiny_run, "--steps", "13"), "error: --steps 13: give a step from 1 to the run's train.steps=12"),
        ((tiny_run, "--out", tiny_run), f"error: --out {tiny_run}: that is the run itself"),
    ]
    for args, message in cases:
        status, out = reproduce(capsys, *args)
        assert status == 2 and len(out) == 1 and out[0].startswith(message), (args, out)


def test_compare_metrics_rows_missing_metrics_and_the_gpu_tolerance():
    a = [{"step": 2, "train/loss": 1.0, "perf/train_seconds": 1.0}, {"step": 4, "train/loss": 0.5}]
    b = [{"step": 2, "train/loss": 1.0, "perf/train_seconds": 9.0}, {"step": 4, "train/loss": 0.5 * (1 + GPU_RTOL / 2)}]
    exact = compare_metrics(a, b, up_to=4)
    assert exact.steps == [2] and exact.excluded == ["perf/train_seconds"]
    assert (exact.difference.step, exact.difference.metric) == (4, "train/loss")
    close = compare_metrics(a, b, up_to=4, exact=False)
    assert close.match and close.steps == [2, 4]
    assert close.largest[1:] == (4, "train/loss") and close.largest[0] == pytest.approx(GPU_RTOL / 2, rel=1e-3)
    b[1]["train/loss"] = 0.5 * (1 + 2 * GPU_RTOL)
    assert not compare_metrics(a, b, up_to=4, exact=False).match
    assert compare_metrics([{"step": 2, "train/lambda1": 0.0}], [{"step": 2, "train/lambda1": GPU_ATOL / 2}], 2,
                           exact=False).match
    assert compare_metrics(a, b, up_to=2).match  # rows after the cut are not compared
    missing = compare_metrics(a, [b[0]], up_to=4).difference
    assert (missing.step, missing.metric, missing.original, missing.reproduced) == (4, "row", "logged", "not logged")
    extra = compare_metrics(a, [b[0], {**b[1], "eval/return_mean": 3.0}], up_to=4, exact=False).difference
    assert (extra.metric, extra.original, extra.reproduced) == ("eval/return_mean", "(absent)", 3.0)
