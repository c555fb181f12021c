#!/usr/bin/env bash
# The GPU check: install, run the tests that need CUDA, then the speed benchmarks on CUDA.
# One call on a GPU machine, about 8 minutes on an H100:
#
#   bash scripts/gpu_check.sh 2>&1 | tee gpu_check.log
#
# A machine with no package index needs hydra-core, omegaconf and antlr4-python3-runtime
# (the tests' and zoo_cost.py's config composition) as wheels in .whl/, made where pip works:
#   pip download --no-deps --only-binary=:all: -d .whl hydra-core omegaconf antlr4-python3-runtime==4.9.3
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

step() { echo; echo "=== $* ($(date +%T))"; }

step install
if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/ptmz-site .whl/*.whl
    export PYTHONPATH=/tmp/ptmz-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # ptmz itself, without touching site-packages
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

step "CUDA tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_together.py -k "cuda or float64"

step "training epoch vs the published-style loop (benchmarks/train.py)"
"$PYTHON" benchmarks/train.py --device cuda --widths 2 8 32 --images 8192 --repeats 3 --workers 8 --compile

step "images/s per width next to the roofline (benchmarks/throughput.py)"
"$PYTHON" benchmarks/throughput.py --device cuda --widths 2 8 32 128 --batch 128 --images 16384
"$PYTHON" benchmarks/throughput.py --device cuda --widths 8 --batch 128 --images 16384 --compile

step "3 seeds together vs one after another (benchmarks/seeds.py)"
"$PYTHON" benchmarks/seeds.py --device cuda --widths 2 4 8 16 --batches 8 32 128 --images 1024

step "the 192-model CIFAR-10 ResNet-18 zoo, projected (benchmarks/zoo_cost.py)"
"$PYTHON" benchmarks/zoo_cost.py --zoo cifar10_resnet18 --device cuda --steps 10
