#!/usr/bin/env bash
# The GPU check: install, time training on CUDA next to the roofline, project the published
# zoo's cost, run the tests that need CUDA, then the side-by-side benchmarks. One call on a GPU
# machine, about 8 minutes (each step under its own limit: 11 at most, with the install):
#
#   bash scripts/gpu_check.sh 2>&1 | tee gpu_check.log
#
# Steps run in the order of what matters most, each under its own time limit, and a failed step
# does not stop the ones after it: one call gives every number it can.
#
# A machine with no package index needs hydra-core, omegaconf and antlr4-python3-runtime
# (the tests' and zoo_cost.py's config composition) as wheels in .whl/, made where pip works:
#   pip download --no-deps --only-binary=:all: -d .whl hydra-core omegaconf
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1  # a step past its limit prints where it was
PYTHON=${PYTHON:-python3}
failed=()

step() {  # step SECONDS TITLE COMMAND...
    local limit=$1 title=$2
    shift 2
    echo
    echo "=== $title ($(date +%T), at most ${limit}s)"
    timeout -s ABRT "$limit" "$@" || { local rc=$?; echo "=== FAILED ($rc): $title"; failed+=("$title"); return $rc; }
}

if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/ptmz-site .whl/*.whl
    export PYTHONPATH=/tmp/ptmz-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # ptmz itself, without touching site-packages
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

tput=(benchmarks/throughput.py --device cuda --batch 128 --images 8192)
step 45 "images/s per width next to the roofline, CUDA-graph steps (throughput.py)" \
    "$PYTHON" "${tput[@]}" --widths 2 8 32 128 --step cuda_graph
zoo=(benchmarks/zoo_cost.py --zoo cifar10_resnet18 --device cuda --together 3 --steps 16
    --images 256 --step cuda_graph --precision bf16)
for points in 1 4; do
    step 40 "grid points at once: $points (zoo_cost.py, width 8, 3 seeds folded)" \
        "$PYTHON" "${zoo[@]}" --widths 8 --batch-sizes 8 128 --concurrent "$points"
done
step 200 "the 192-model CIFAR-10 ResNet-18 zoo: graphs, bf16, seeds together, small runs packed" \
    "$PYTHON" "${zoo[@]}" --batch-sizes 8 128 1024 --together-up-to 32 --concurrent 4 \
    --concurrent-up-to 64 --eval-precision bf16
step 195 "CUDA tests" \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_together.py \
    tests/test_at_once.py -k cuda
step 70 "3 seeds together (folded, vmapped) vs one after another, CUDA graphs (seeds.py)" \
    "$PYTHON" benchmarks/seeds.py --device cuda --widths 2 8 --batches 8 32 128 \
    --images 1024 --min-steps 32 --repeats 2 --step cuda_graph

echo
if [ ${#failed[@]} -eq 0 ]; then echo "=== all steps passed"; else printf '=== failed: %s\n' "${failed[@]}"; exit 1; fi
