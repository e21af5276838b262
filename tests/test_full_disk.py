"""A full disk and exports into folders: one line naming the path (exit 1 for a failed write,
2 for a folder raydt will not replace), and nothing a user already has lost or half-written.

A full disk is simulated by the write that fills it: some bytes reach the file, then the
write fails with ENOSPC as the OS's would (or with the error text of safetensors' Rust
writer). The last test fills a real (tmpfs) disk where user namespaces allow mounting one.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from raydt.cli import main
from tests.helpers import REPO, RUN_SPEC, TINY_RUN, quiet, tiny_config

TINY = [a for s in TINY_RUN for a in ("--set", s)]
FULL = "no space left on the device writing"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _shared_datasets) -> Path:
    """A tiny run trained to its last step (12) once per module; tests take copies."""
    from raydt.train.loop import fit

    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(_shared_datasets, root / "data", ignore=shutil.ignore_patterns(".*.lock"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYDT_DATA_DIR", str(root / "data"))
        mp.setenv("RAYDT_OFFLINE", "1")
        fit(tiny_config(), root / "run", quiet())
    return root / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(folder: Path) -> list[str]:
    """raydt's temporary files and folders (``.NAME.tmp-PID``, ``.NAME.old-PID``) in ``folder``."""
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def fill_after(limit: int, dest) -> None:
    """Write ``limit`` bytes of a would-be file to ``dest`` (a path or a binary file), then fail
    as a write to a full disk does."""
    data = b"\0" * limit
    if isinstance(dest, (str, os.PathLike)):
        Path(dest).write_bytes(data)
    else:
        dest.write(data)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --------------------------------------------------------------------------------------
# export into a folder


def test_export_refuses_a_users_folder_replaces_an_earlier_export_and_overwrites_when_asked(run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (mine / "config.json").write_text('{"mine": true}')
    before = contents(mine)
    assert main(["export", str(run), "--out", str(mine)]) == 2
    line = one_error(capsys)
    assert str(mine) in line and "--overwrite" in line
    assert contents(mine) == before and leftovers(tmp_path) == []

    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    exported = {"config.json", "model.safetensors", "raydt_eval.json", "README.md"}
    assert set(contents(out)) == exported
    # An earlier export is replaced without --overwrite, whole: nothing of the old one stays.
    (out / "model-00001-of-00002.safetensors").write_bytes(b"an old shard")
    (out / "README.md").write_text("an old card")
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert set(contents(out)) == exported and "raydt export" in (out / "README.md").read_text()
    assert leftovers(tmp_path) == []
    # A user's file put into an export makes it the user's folder again.
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert str(out) in one_error(capsys) and (out / "notes.txt").read_text() == "mine"

    capsys.readouterr()
    assert main(["export", str(run), "--out", str(mine), "--overwrite"]) == 0
    assert set(contents(mine)) == exported and leftovers(tmp_path) == []


def test_export_never_replaces_the_folder_holding_the_run(run, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["export", str(run), "--out", str(tmp_path), "--overwrite"]) == 2
    assert str(tmp_path) in one_error(capsys)
    assert (run / "checkpoints" / "last.pt").is_file() and (tmp_path / "keep.txt").read_text() == "x"


def test_export_of_a_run_without_a_checkpoint_names_where_it_is_looked_for(run, tmp_path, capsys):
    shutil.rmtree(run / "checkpoints")
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 2
    assert str(run / "checkpoints" / "last.pt") in one_error(capsys)
    assert not (tmp_path / "hf").exists()


def test_export_into_a_mount_point_fills_it_in_place(run, tmp_path, capsys, monkeypatch):
    # A mount point cannot be renamed: the export is staged inside it and moved in.
    out = tmp_path / "volume"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
    assert main(["export", str(run), "--out", str(out)]) == 0
    exported = contents(out)
    assert {"config.json", "model.safetensors", "raydt_eval.json", "README.md"} == set(exported)
    (out / "model-00001-of-00002.safetensors").write_bytes(b"an old shard")
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert set(contents(out)) == set(exported) and leftovers(tmp_path) == [] and leftovers(out) == []


# --------------------------------------------------------------------------------------
# a full disk


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint(run, capsys, monkeypatch):
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: fill_after(600, f))
    status = main(["train", str(RUN_SPEC), "--no-ray", "--out", str(run), "--resume", *TINY,
                   "--set", "train.steps=16"])
    line = one_error(capsys)
    assert status == 1 and line == f"error: {FULL} {last}"
    assert last.read_bytes() == before and leftovers(last.parent) == []
    monkeypatch.undo()
    from raydt.train.checkpoint import load_checkpoint

    assert load_checkpoint(run)["step"] == 12


def test_stale_checkpoint_temporaries_go_when_the_run_goes_on(run, capsys):
    checkpoints = run / "checkpoints"
    stale = [".last.pt.tmp-4242", ".step_4.pt.tmp-7"]  # writes killed midway
    others = ["notes.txt", ".last.pt.tmp-backup", "mine.pt.tmp-3", ".last.txt.tmp-5"]
    for name in stale + others:
        (checkpoints / name).write_bytes(b"partial")
    assert main(["train", str(RUN_SPEC), "--no-ray", "--out", str(run), "--resume", *TINY,
                 "--set", "train.steps=16"]) == 0
    names = {p.name for p in checkpoints.iterdir()}
    assert not names & set(stale) and set(others) <= names
    assert all((checkpoints / name).read_bytes() == b"partial" for name in others)


def test_full_disk_writing_a_figure_keeps_the_earlier_figure(run, tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    figure = tmp_path / "figs" / "curves.png"
    figure.parent.mkdir()
    figure.write_bytes(b"the earlier figure")
    monkeypatch.setattr(Figure, "savefig", lambda self, fname, *a, **k: fill_after(100, fname))
    status = main(["compare", str(run), "--out", str(figure)])
    assert status == 1 and one_error(capsys) == f"error: {FULL} {figure}"
    assert figure.read_bytes() == b"the earlier figure" and leftovers(figure.parent) == []


def test_full_disk_while_exporting_leaves_the_earlier_export(run, tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    before = contents(out)

    def full(tensors, filename, metadata=None):  # what safetensors' writer raises on a full disk
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 1
    assert one_error(capsys) == f"error: {FULL} {out}"
    assert contents(out) == before and leftovers(tmp_path) == []


GENUINE = """
import os, sys
from pathlib import Path

import torch

from raydt.errors import RunFailed
from raydt.figures import pyplot, save_figure
from raydt.fsutil import space_for
from raydt.train.checkpoint import load_checkpoint, save_checkpoint

disk = Path(sys.argv[1])
last = disk / "checkpoints" / "last.pt"
save_checkpoint(last, {"step": 1, "w": torch.ones(1000)})
try:  # more than the disk holds: torch's writer sees ENOSPC and says "unexpected pos"
    save_checkpoint(last, {"step": 2, "w": torch.ones(400_000)})
    raise SystemExit("no error")
except RunFailed as exc:
    assert str(exc) == f"no space left on the device writing {last}", exc
assert load_checkpoint(last)["step"] == 1 and os.listdir(last.parent) == ["last.pt"]
filler = disk / "filler"
with open(filler, "wb", buffering=0) as f:  # the rest of the disk
    try:
        while True:
            f.write(b"\\0" * 4096)
    except OSError:
        pass
fig = pyplot().figure()
fig.gca().plot(range(100))
try:
    save_figure(fig, disk / "fig.png")
    raise SystemExit("no error")
except RunFailed as exc:
    assert str(exc) == f"no space left on the device writing {disk / 'fig.png'}", exc
from safetensors.torch import save_file
try:
    with space_for(disk / "model.safetensors"):
        save_file({"w": torch.ones(100_000)}, disk / "model.safetensors")
    raise SystemExit("no error")
except RunFailed as exc:
    assert "no space left on the device writing" in str(exc), exc
assert sorted(os.listdir(disk)) == ["checkpoints", "filler"], os.listdir(disk)
print("ok")
"""


def test_a_real_full_disk(tmp_path):
    """The same on a 512 KiB tmpfs, mounted in a user namespace (skipped where none can be)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here to mount a small tmpfs in")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "genuine.py"
    script.write_text(textwrap.dedent(GENUINE))
    command = f"mount -t tmpfs -o size=512k tmpfs {disk} && exec {sys.executable} {script} {disk}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    if proc.returncode and "mount:" in proc.stderr:
        pytest.skip(f"tmpfs cannot be mounted here: {proc.stderr.strip()}")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_a_full_disk_while_logging_metrics_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import errno

    from raydt.errors import RunFailed
    from raydt.sinks import JsonlSink

    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink.log(1, {"train/loss": 0.5})

    class Full:
        def write(self, _text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr(sink, "_file", Full())
    with pytest.raises(RunFailed, match=f"no space left on the device writing {tmp_path / 'metrics.jsonl'}"):
        sink.log(2, {"train/loss": 0.4})


def test_a_full_disk_under_a_real_buffered_metrics_file_stays_one_line_through_close(tmp_path):
    # /dev/full refuses every write with ENOSPC, as a full disk does, buffering included.
    import os

    from raydt.errors import RunFailed
    from raydt.sinks import JsonlSink, MultiSink

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink._file.close()
    sink.path = tmp_path / "metrics.jsonl"
    sink._file = open("/dev/full", "a")  # noqa: SIM115 (closed by the sink)

    class Closing:
        closed = False

        def log(self, step, metrics):
            pass

        def close(self):
            Closing.closed = True

    both = MultiSink(sink, Closing())
    with pytest.raises(RunFailed, match="no space left on the device writing"):
        both.log(1, {"train/loss": 0.5})
    with pytest.raises(RunFailed, match="no space left on the device writing"):
        both.close()  # the buffered row fails again on close: the same line, not an OSError
    assert Closing.closed  # and the other sinks still close
