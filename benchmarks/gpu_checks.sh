#!/usr/bin/env bash
# The GPU checks of the PyTorch side, in one run of a few minutes on a machine with one CUDA
# GPU (TensorFlow is not needed): the torch tests with the GPU visible (the batched
# augmentation and RandResizeCrop's chunked resize against Pillow on cuda, the trainer on
# cuda), then the augmentation and training-epoch benchmarks. Logs and JSON go to $OUT
# (default gpu_checks_out/). SKIP=augment (or tests, train; comma-separated) leaves parts out.
#
#     bash benchmarks/gpu_checks.sh            # from the repository root
set -u
OUT=${OUT:-gpu_checks_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi -L
$PY -c "import torch, torchvision, PIL; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'Pillow', PIL.__version__, 'cuda', torch.cuda.is_available())"

skip() { [[ ",${SKIP:-}," == *",$1,"* ]]; }

if ! skip tests; then
echo "== torch tests with the GPU visible"
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider -n 8 \
    tests/augmentation tests/DeepAA_evaluate tests/networks/test_torch_models.py \
    2>&1 | tee "$OUT/tests.log" | tail -40
fi

if ! skip augment; then
echo "== augmentation throughput (benchmarks/augment.py)"
timeout "${AUGMENT_TIMEOUT:-150}" $PY benchmarks/augment.py --json "$OUT/augment.json" \
    2>&1 | tee "$OUT/augment.log"
fi

skip train && exit 0
echo "== training epoch, WRN-28-10 (benchmarks/train_epoch.py)"
for opts in "" "--deterministic" "--amp bf16 --channels_last"; do
    timeout "${TRAIN_TIMEOUT:-120}" $PY benchmarks/train_epoch.py --model wresnet28_10 \
        --n 5120 --batch 128 --workers 12 --backends pil,tensor --epochs 2 $opts \
        2>&1 | grep -a '^device:\|^data loader\|^epoch, ' | tee -a "$OUT/train_epoch.log"
done
