import subprocess
import sys


def test_core_imports_neither_ray_nor_optuna():
    code = (
        "import sys\n"
        "import raydt.config, raydt.cli, raydt.data.sources, raydt.data.sampler, raydt.data.generate\n"
        "import raydt.data.minari_source, raydt.data.ars\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_raydt_loads_neither_torch_nor_ray_until_a_call_needs_them(tmp_path):
    """The notebook API is exported lazily (PEP 562): touching every exported name, and
    reading a run back, imports neither torch nor Ray; the training loop does."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.resolved.yaml").write_text("train: {steps: 4}\n")
    (run / "metrics.jsonl").write_text('{"step": 2, "train/loss": 0.5}\n{"step": 4, "train/loss": 0.25}\n')
    code = (
        "import sys\n"
        "def heavy():\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))\n"
        "import raydt\n"
        "assert not heavy(), heavy()\n"
        "for name in raydt._EXPORTS:\n"
        "    getattr(raydt, name)\n"
        "assert callable(raydt.train) and callable(raydt.load_run) and callable(raydt.sweep)\n"
        "assert not heavy(), heavy()\n"
        f"run = raydt.load_run({str(run)!r})\n"
        "assert run.metrics['train/loss'].tolist() == [0.5, 0.25] and run.config.train.steps == 4\n"
        "assert not heavy(), heavy()  # reading results back needs neither\n"
        "import raydt.train.loop\n"
        "assert 'torch' in heavy() and raydt.train.loop.fit and callable(raydt.train)  # the check sees torch\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
