"""Build what sweep specs' trials read (datasets, pre-trained backbones, λ1 centres, text)
before anything is timed, and print how long that took: a bare GPU machine makes its data
and pre-trains its backbones once, apart from the measurements (``bench/gpu_check.sh``).

    python -m bench.prepare bench/specs/gpu_share.yaml bench/specs/convergence_gpu_check.yaml
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    from raydt.prepare import prepare_runs
    from raydt.tune.run import preparation_configs
    from raydt.tune.spec import load_sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="sweep spec YAML files")
    args = parser.parse_args()
    for path in args.specs:
        start = time.perf_counter()
        made = prepare_runs(preparation_configs(load_sweep(path)), None)
        print(f"prepared {path}: {', '.join(sorted({a.kind for a in made})) or 'nothing'} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
