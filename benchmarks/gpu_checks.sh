#!/usr/bin/env bash
# The GPU checks of the PyTorch side, in one run of a few minutes on a machine with one CUDA
# GPU (TensorFlow is not needed): the torch tests with the GPU visible (the batched
# augmentation and RandResizeCrop's chunked resize against Pillow on cuda, a policy batch
# without host-device synchronisation, the trainer on cuda), then the augmentation and
# training-epoch benchmarks. Logs and JSON go to $OUT (default gpu_checks_out/).
# SKIP=augment (or tests, train; comma-separated) leaves parts out. Exits non-zero if a part
# failed, after running the others.
#
#     bash benchmarks/gpu_checks.sh            # from the repository root
set -u -o pipefail
OUT=${OUT:-gpu_checks_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
failed=()
skip() { [[ ",${SKIP:-}," == *",$1,"* ]]; }

nvidia-smi -L
$PY -c "import torch, torchvision, PIL; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'Pillow', PIL.__version__, 'cuda', torch.cuda.is_available())"

if ! skip tests; then
    echo "== torch tests with the GPU visible"
    parallel=()  # pytest-xdist, where installed, runs the tests on 8 processes
    $PY -c "import xdist" 2>/dev/null && parallel=(-n 8)
    timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider "${parallel[@]}" \
        tests/augmentation tests/DeepAA_evaluate tests/networks/test_torch_models.py \
        > "$OUT/tests.log" 2>&1 || failed+=(tests)
    tail -25 "$OUT/tests.log"
fi

if ! skip augment; then
    echo "== augmentation throughput (benchmarks/augment.py)"
    timeout "${AUGMENT_TIMEOUT:-150}" $PY benchmarks/augment.py --json "$OUT/augment.json" \
        2>&1 | tee "$OUT/augment.log" || failed+=(augment)
fi

if ! skip train; then
    echo "== training epoch, WRN-28-10 (benchmarks/train_epoch.py)"
    for opts in "" "--deterministic" "--amp bf16 --channels_last"; do
        # shellcheck disable=SC2086  # opts holds several flags
        timeout "${TRAIN_TIMEOUT:-120}" $PY benchmarks/train_epoch.py --model wresnet28_10 \
            --n 5120 --batch 128 --workers 12 --backends pil,tensor --epochs 2 $opts \
            >> "$OUT/train_epoch.log" 2>&1 || failed+=("train $opts")
    done
    grep -a '^device:\|^data loader\|^epoch, \|Error' "$OUT/train_epoch.log"
fi

if (( ${#failed[@]} )); then
    echo "failed: ${failed[*]} (logs in $OUT)"
    exit 1
fi
