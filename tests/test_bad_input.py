"""Bad input and faults: one line naming the file, key or value and the fix, exit status 2
(bad input) or 1 (a failed run), before expensive work, nothing already written changed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raydt.cli import main
from tests.helpers import REPO

SPEC = str(REPO / "tune_specs/runs/hopper_medium_dt.yaml")


def run(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    err = capsys.readouterr().err.strip()
    return status, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_out_that_is_a_file_is_refused_before_anything_is_built(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("precious")
    status, err = run(capsys, "train", SPEC, "--no-ray", "--out", str(out), "--set", "train.steps=2")
    assert status == 2 and "--out" in one_line(err) and "is a file" in err
    assert out.read_text() == "precious"


def test_data_dir_that_is_a_file_is_refused(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("RAYDT_DATA_DIR", str(cache))
    status, err = run(capsys, "train", SPEC, "--no-ray", "--out", str(tmp_path / "run"))
    assert status == 2 and "RAYDT_DATA_DIR" in one_line(err)
    assert cache.read_text() == "not a folder" and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_compare_out_in_a_folder_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "figs"
    blocker.write_text("x")
    status, err = run(capsys, "compare", str(tmp_path), "--out", str(blocker / "curves.png"))
    assert status == 2 and "is a file" in one_line(err)


def test_spec_path_that_is_a_directory(capsys):
    status, err = run(capsys, "train", str(REPO / "tune_specs"), "--no-ray")
    assert status == 2 and "is a directory; give a spec file such as" in one_line(err)


def test_sweep_spec_given_to_train_says_to_use_sweep(capsys):
    spec = str(REPO / "tune_specs/quickstart.yaml")
    status, err = run(capsys, "train", spec, "--no-ray")
    assert status == 2 and f"raydt sweep {spec}" in one_line(err)


@pytest.mark.parametrize("episodes", ["0", "-3"])
def test_eval_with_no_or_negative_episodes(tmp_path, capsys, episodes):
    status, err = run(capsys, "eval", str(tmp_path), "--episodes", episodes)
    assert status == 2 and f"--episodes {episodes}: give a positive number" in one_line(err)


def test_sweep_dry_run_checks_every_search_point(tmp_path, capsys):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"extends: {REPO / 'tune_specs/quickstart.yaml'}\ntune: {{storage_path: {tmp_path}}}\n"
                    "search:\n  model.backbone: {grid: [random, /nonexistent/chibit]}\n"
                    f"  data.dataset: {{choice: ['generated:hopper-medium', 'd4rl:{tmp_path}/missing.hdf5']}}\n")
    for extra in (["--dry-run"], []):
        status, err = run(capsys, "sweep", str(spec), *extra)
        assert status == 2 and "2 problems before any trial starts" in err and "Traceback" not in err
        assert "model.backbone='/nonexistent/chibit': no such directory" in err
        assert "missing.hdf5 not found" in err and "(search point: " in err
    assert not (tmp_path / "quickstart").exists()  # nothing started


def test_offline_switches_every_library_before_it_is_imported(tmp_path):
    code = ("import os; from raydt import offline; offline.apply(); import huggingface_hub.constants as c; "
            "print(c.HF_HUB_OFFLINE, os.environ['HF_DATASETS_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env | {"RAYDT_OFFLINE": "1"}, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "1", "1"]
    out = subprocess.run([sys.executable, "-c", "from raydt import offline; print(offline.apply())"],
                         env=env | {"RAYDT_OFFLINE": "0"}, cwd=REPO, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_offline_hub_backbone_fails_at_once_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env |= {"RAYDT_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "RAYDT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "raydt", "train", SPEC, "--no-ray", "--out", str(tmp_path / "run"),
                           "--set", "model.backbone=gpt2"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_line(proc.stderr)
    assert "model.backbone='gpt2'" in line and "RAYDT_OFFLINE" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("case", ["empty", "missing"])
def test_pretraining_corpus_errors_name_corpus_text(tmp_path, capsys, case):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if case == "empty":
        (corpus / "a.txt").write_text("  \n")
    target = corpus if case == "empty" else tmp_path / "nowhere"
    spec = tmp_path / "lm.yaml"
    spec.write_text(f'corpus: {{text: "text:{target}", tokenizer: bpe, vocab_size: 300, block_size: 32}}\n'
                    "model: {n_embd: 32, n_head: 2, n_layer: 2}\ntrain: {steps: 2}\n")
    status, err = run(capsys, "pretrain", str(spec), "--out", str(tmp_path / "run"))
    line = one_line(err)
    assert status == 2 and f"corpus.text='text:{target}'" in line and "loss.text" not in line
    assert ("no text there" if case == "empty" else "does not exist") in line


def test_resume_with_a_change_the_checkpoint_cannot_hold_is_refused_in_one_line(tmp_path, capsys):
    from tests.helpers import TINY_RUN

    tiny = [a for s in TINY_RUN for a in ("--set", s)]
    out = str(tmp_path / "run")
    assert main(["train", SPEC, "--no-ray", "--out", out, *tiny, "--set", "train.steps=4"]) == 0
    capsys.readouterr()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    status, err = run(capsys, "train", SPEC, "--no-ray", "--out", out, "--resume", *tiny,
                      "--set", "train.steps=8", "--set", "model.n_embd=64", "--set", "optim.lr=0.01")
    line = one_line(err)
    assert status == 2 and "model.n_embd: 32 → 64" in line and "optim.lr" in line and "size mismatch" not in err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # nothing written
    # The budget may change: the same resume with only train.steps raised goes on.
    assert main(["train", SPEC, "--no-ray", "--out", out, "--resume", *tiny, "--set", "train.steps=8"]) == 0


def _hopper_file(path, actions_scale=1.0, observations=None):
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    n = 400
    timeouts = np.zeros(n, bool)
    timeouts[199::200] = True
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 11)).astype(np.float32) if observations is None else observations
        f["actions"] = (rng.uniform(-1, 1, size=(n, 3)) * actions_scale).astype(np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = timeouts
    return path


@pytest.mark.parametrize("scale, refused", [(300.0, True), (1.05, False)])
def test_actions_beyond_what_the_tanh_head_reaches_are_refused_naming_the_file(tmp_path, capsys, scale, refused):
    from tests.helpers import TINY_RUN

    data = _hopper_file(tmp_path / "hopper_medium-v2.hdf5", actions_scale=scale)
    tiny = [a for s in TINY_RUN for a in ("--set", s)]
    out = tmp_path / "run"
    status, err = run(capsys, "train", SPEC, "--no-ray", "--out", str(out), *tiny, "--set", f"data.dataset=d4rl:{data}",
                      "--set", "train.steps=2", "--set", "train.eval_every=2", "--set", "eval.max_steps=5")
    if refused:
        line = one_line(err)
        assert status == 2 and str(data) in line and "actions span [-29" in line and "rescale" in line
        assert not (out / "metrics.jsonl").exists()
    else:  # slightly outside: trained, with a note
        assert status == 0


def test_hdf5_observations_stored_as_strings_are_named(tmp_path, capsys):
    import numpy as np

    data = _hopper_file(tmp_path / "hopper_medium-v2.hdf5", observations=np.array([b"x"] * 400).repeat(11).reshape(400, 11))
    status, err = run(capsys, "data", "info", f"d4rl:{data}")
    assert status == 2 and "stores observations as |S1 values" in one_line(err)


@pytest.mark.parametrize("out, dry, says", [
    ("file:///proc/nope/x", False, "cannot be written"),
    ("memory://bucket/x", False, "memory:// storage lives in one process"),
    ("memory://bucket/x", True, "memory:// storage lives in one process"),
])
def test_sweep_storage_is_checked_as_ray_will_use_it_before_ray_starts(capsys, out, dry, says):
    import time

    start = time.perf_counter()
    status, err = run(capsys, "sweep", str(REPO / "tune_specs/quickstart.yaml"), "--out", out,
                      *(["--dry-run"] if dry else []))
    assert status == 2 and f"--out / tune.storage_path {out}" in one_line(err) and says in err
    assert time.perf_counter() - start < 10  # no Ray started (that alone takes ~10 s)


def test_context_length_past_every_episode_or_memory_is_refused_naming_it(tmp_path, capsys):
    from raydt.train.loop import check_mask_fits
    from tests.helpers import TINY_RUN, tiny_config

    tiny = [a for s in TINY_RUN for a in ("--set", s)]
    status, err = run(capsys, "train", SPEC, "--no-ray", "--out", str(tmp_path / "run"), *tiny,
                      "--set", "data.context_length=100000")
    assert status == 2 and "data.context_length=100000 exceeds the longest episode" in one_line(err)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    cfg = tiny_config("data.context_length=1000", "train.batch_size=64")  # 64 masks of 3000×3000: 0.54 GiB
    check_mask_fits(cfg, 1, torch_device("cpu"), available=2**30)
    with pytest.raises(Exception, match=r"data.context_length=1000 needs more than 0.5 GiB .* cpu has 0.2 GiB free"):
        check_mask_fits(cfg, 1, torch_device("cpu"), available=2**28)


def test_a_spec_of_megabytes_is_refused_before_it_is_parsed(tmp_path, capsys):
    spec = tmp_path / "huge.yaml"
    spec.write_text("train:\n  steps: 2\n" + "# padding\n" * 200_000)
    status, err = run(capsys, "train", str(spec), "--no-ray")
    assert status == 2 and "MiB is not a spec" in one_line(err)


def torch_device(name):
    import torch

    return torch.device(name)


def _all_failed_sweep(root):
    import json

    root.mkdir()
    (root / "sweep.yaml").write_text("searched_keys: [train.seed]\n")
    rows = [{"trial": f"trial_0000{i}", "status": "ERROR", "error": f"DataError: seed {i} broke", "step": None}
            for i in range(2)]
    for row in rows:
        (root / row["trial"]).mkdir()
    (root / "trials.json").write_text(json.dumps(rows))
    return rows


def test_a_sweep_whose_every_trial_failed_exits_1_listing_them(tmp_path, capsys, monkeypatch):
    import raydt.tune.run as tune_run

    rows = _all_failed_sweep(tmp_path / "sweep")
    monkeypatch.setattr(tune_run, "run_sweep", lambda *a, **k: tune_run.SweepOutcome(str(tmp_path / "sweep"), rows))
    status = main(["sweep", str(REPO / "tune_specs/quickstart.yaml")])
    captured = capsys.readouterr()
    assert status == 1 and "holds no run directories" not in captured.err + captured.out
    assert "trial_00000: DataError: seed 0 broke" in captured.out and "2 of 2 trial(s) failed" in captured.err
    # report, compare and bench name the failures too, as a failed sweep (exit 1)
    for command in (["report"], ["compare", "--out", str(tmp_path / "c.png")], ["bench", "convergence"]):
        status, err = run(capsys, *command, str(tmp_path / "sweep"))
        line = one_line(err)
        assert status == 1 and "2 trial(s) failed: trial_00000: DataError: seed 0 broke" in line, command


def test_a_sweep_without_address_says_which_running_cluster_it_joined(monkeypatch):
    import ray

    from raydt.train import worker

    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")  # what `ray start` or a user's shell leaves behind
    assert worker.running_cluster() == "10.1.2.3:6379"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **_: None)
    said = []
    worker.connect(None, log=said.append)
    assert said and "joined the Ray cluster already running at 10.1.2.3:6379" in said[0] and "--address local" in said[0]
    said.clear()
    worker.connect("local", log=said.append)  # an address given: nothing joined by surprise
    assert said == []


def test_ctrl_c_during_train_says_how_to_resume(tmp_path):
    import signal
    import time

    from tests.helpers import TINY_RUN, wait_for

    out = tmp_path / "run"
    tiny = [a for s in TINY_RUN for a in ("--set", s)]
    for eval_every, ending in ((50000, "--no-ray --overwrite"), (4, "--no-ray --resume")):
        proc = subprocess.Popen([sys.executable, "-m", "raydt", "train", SPEC, "--no-ray", "--out", str(out), *tiny,
                                 "--set", "train.steps=100000", "--set", f"train.eval_every={eval_every}",
                                 *(["--overwrite"] if eval_every == 4 else [])],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        # Interrupted before any checkpoint, then after one: each message says what works.
        def started(needs_checkpoint=eval_every == 4):
            logged = (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0
            return logged and (not needs_checkpoint or (out / "checkpoints" / "last.pt").is_file())

        wait_for(started, timeout=120)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
        line = one_line(err)
        assert "training interrupted" in line and f"--out {out}" in line and line.endswith(ending), line


def test_gpu_share_auto_is_resolved_before_the_local_plan(tmp_path, capsys):
    # gpus_per_worker: auto reaches the capacity check resolved (a whole GPU here), so a
    # machine without GPUs says so in one line instead of an assertion's traceback.
    status, err = run(capsys, "train", SPEC, "--out", str(tmp_path / "run"), "--set", "resources.use_gpu=true",
                      "--set", "resources.gpus_per_worker=auto", "--set", f"data.dataset={TINY}")
    assert status == 2 and "GPU" in one_line(err) and "AssertionError" not in err


TINY = "generated:hopper-medium?steps=3000"


def test_resume_allows_keys_a_run_predates_and_a_moved_pretrain_spec():
    from raydt.config import to_dict
    from raydt.errors import RaydtError
    from raydt.rundir import flatten
    from raydt.train.driver import check_resume_changes
    from tests.helpers import tiny_config

    config = tiny_config("model.backbone=pretrain:/new/checkout/tune_specs/pretrain/chibit_quick.yaml")
    before = flatten(to_dict(config))
    del before["train.deterministic"]  # recorded before that key existed: it ran with the default
    before["model.backbone"] = "pretrain:/old/checkout/tune_specs/pretrain/chibit_quick.yaml"
    check_resume_changes(before, config, "run/config.resolved.yaml")
    before["model.backbone"] = "pretrain:/old/checkout/tune_specs/pretrain/chibit_wiki.yaml"
    with pytest.raises(RaydtError, match="model.backbone"):
        check_resume_changes(before, config, "run/config.resolved.yaml")


def test_eval_env_of_another_game_with_other_actions_is_refused():
    from types import SimpleNamespace

    from raydt.errors import ConfigError
    from raydt.eval.saved import check_fits

    pong = SimpleNamespace(args=SimpleNamespace(frame_stack=4, act_dim=6, obs_dim=0))
    check_fits(pong, "ALE/Pong-v5", "--env")
    with pytest.raises(ConfigError, match="--env ALE/Breakout-v5: the game has 4 actions, the model 6"):
        check_fits(pong, "ALE/Breakout-v5", "--env")
