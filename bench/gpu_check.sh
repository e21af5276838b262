#!/usr/bin/env bash
# Everything a lent GPU should measure, in one go (< 10 minutes on one GPU):
#   1. the GPU test tier (resume on CUDA, CPU<->GPU checkpoints, bf16, pinned prefetching
#      frame sampler, the prebuilt attention mask, evaluation of a saved run);
#   2. training throughput vs Hugging Face's DecisionTransformerModel, bf16, with MFU,
#      eager and torch.compile'd;
#   3. a short convergence run (random vs language-pretrained, one seed each);
#   4. the cost of train.deterministic (deterministic kernels) per training step.
# Results land in bench/results/ (throughput_gpu*.json, convergence_gpu_check.json,
# deterministic_cuda_auto.json).
#
#   bash bench/gpu_check.sh            # from the repository root, in the installed venv
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader || true
start=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - start )) s in)"; }

step "GPU tests"
python -m pytest -q -p no:cacheprovider -m gpu tests/train/test_gpu.py

step "throughput, bf16 autocast"
python -m bench.throughput --device cuda --sizes dt 3m 18m --name throughput_gpu
step "throughput, bf16 + torch.compile"
python -m bench.throughput --device cuda --sizes dt 3m --compile --name throughput_gpu_compile

step "convergence, short"
python -m bench.convergence --spec bench/specs/convergence_gpu_check.yaml --name convergence_gpu_check
step "train.deterministic: cost per step"
python -m bench.deterministic --device cuda --steps 100
echo; echo "gpu_check done in $(( $(date +%s) - start )) s"
