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
