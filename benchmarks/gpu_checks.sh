#!/usr/bin/env bash
# The GPU checks of the PyTorch side, in one run of a few minutes on a machine with one CUDA
# GPU (TensorFlow is not needed): the torch tests with the GPU visible (the batched
# augmentation and RandResizeCrop's chunked resize against Pillow on cuda, a policy batch
# without host-device synchronisation, the next batch's policy on a side stream, the trainer
# on cuda), then the augmentation and training-epoch benchmarks (every placement of the
# policy: Pillow or batched in WORKERS=4 loader workers, on the GPU with and without the
# helper thread; at fp32 and bf16). Logs and JSON go to $OUT (default gpu_checks_out/).
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
        --ignore=tests/augmentation/test_keras_layer.py \
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
    # every placement of the policy with 4 loader workers, at fp32 and at bf16 (the loader
    # comparison per worker once); then deterministic kernels
    for opts in "--loader_sizes 32,224" "--amp bf16 --channels_last --loader_sizes ''" \
                "--deterministic --backends pil,batch --loader_sizes ''"; do
        # shellcheck disable=SC2086  # opts holds several flags
        eval timeout "${TRAIN_TIMEOUT:-240}" $PY benchmarks/train_epoch.py --model wresnet28_10 \
            --n 5120 --batch 128 --workers "${WORKERS:-4}" \
            --backends pil,batch,tensor,tensor_inline --epochs 2 $opts \
            >> "$OUT/train_epoch.log" 2>&1 || failed+=("train $opts")
    done
    grep -a '^device:\|^loader alone\|^epoch, \|Error' "$OUT/train_epoch.log"
fi

if (( ${#failed[@]} )); then
    echo "failed: ${failed[*]} (logs in $OUT)"
    exit 1
fi
