#!/usr/bin/env bash
# Everything a lent GPU should measure, in one go (< 10 minutes on one GPU after step 0):
#   0. data made and backbones pre-trained for the specs below (timed apart);
#   1. the GPU test tier (resume on CUDA, CPU<->GPU checkpoints, bf16, the frame sampler's
#      side-stream prefetch, the prebuilt attention mask, evaluation of a saved run);
#   2. training throughput vs Hugging Face's DecisionTransformerModel, bf16, with MFU,
#      eager and compiled (CUDA graphs);
#   3. a 16-trial DT-size sweep with a whole GPU per trial and with four trials per GPU:
#      trials per GPU-hour, GPU utilisation, time to the convergence threshold;
#   4. the values of raydt's measured tables these results support (train.compile: auto,
#      resources.gpus_per_worker: auto).
# With --more: 5. a short convergence run and 6. the cost of train.deterministic.
# Results land in bench/results/ (throughput_gpu*.json, gpu_sweep.json, gpu_tables.json,
# and with --more convergence_gpu_check.json, deterministic_cuda_auto.json).
#
#   bash bench/gpu_check.sh [--more]   # from the repository root, in the installed venv
set -euo pipefail
cd "$(dirname "$0")/.."
more=${1:-}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader || true
start=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - start )) s in)"; }

step "prepare: data and pre-trained backbones (not part of the 10 minutes)"
python -m bench.prepare bench/specs/gpu_share.yaml bench/specs/convergence_gpu_check.yaml
start=$(date +%s)

step "GPU tests"
python -m pytest -q -p no:cacheprovider -m gpu tests/train/test_gpu.py

step "throughput, bf16 autocast"
python -m bench.throughput --device cuda --sizes dt 3m 18m --name throughput_gpu
step "throughput, bf16 + CUDA graphs"
python -m bench.throughput --device cuda --sizes dt 3m 18m --compile --name throughput_gpu_compile

step "sweep: 16 DT-size trials, 1 and 4 per GPU"
python -m bench.gpu_sweep --spec bench/specs/gpu_share.yaml --shares 1 0.25 --name gpu_sweep
step "measured tables"
python -m bench.gpu_tables

if [ "$more" = "--more" ]; then
  step "convergence, short"
  python -m bench.convergence --spec bench/specs/convergence_gpu_check.yaml --name convergence_gpu_check
  step "train.deterministic: cost per step"
  python -m bench.deterministic --device cuda --steps 100
fi
echo; echo "gpu_check done in $(( $(date +%s) - start )) s"
