#!/usr/bin/env bash
# The GPU checks of the PyTorch side, in one run of a few minutes on a machine with one CUDA
# GPU (TensorFlow is not needed): the torch tests with the GPU visible (the batched
# augmentation and RandResizeCrop's chunked resize against Pillow on cuda, a policy batch
# without host-device synchronisation, the next batch's policy on a side stream, the trainer
# on cuda, the PyTorch search's matcher), then the augmentation and training-epoch benchmarks
# (every placement of the policy: Pillow or batched in WORKERS=4 loader workers, on the GPU
# with and without the helper thread; at fp32 and bf16), the PyTorch search's paper-size step
# (fp32, bf16, bf16 + compile; projected --preset paper/fast hours) and a short real search
# (--backend torch: pretraining, two layers of paper-size steps) whose weights then measure
# how bf16 and compile agree with fp32. Logs and JSON go to $OUT (default gpu_checks_out/).
# SKIP=augment (or tests, train, search_bench, search_run; comma-separated) leaves parts out.
# SEARCH_DATA=npz:DIR searches that data (default: 10,000 generated synthetic images).
# Exits non-zero if a part failed, after running the others.
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
        tests/policy_search/test_torch_importance.py \
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

if ! skip search_bench; then
    echo "== search step, PyTorch backend (benchmarks/search_step.py --mode paper)"
    timeout "${SEARCH_BENCH_TIMEOUT:-360}" $PY benchmarks/search_step.py --backend torch \
        --mode paper --variants fp32,bf16,bf16+compile --full_step 2>&1 \
        | tee "$OUT/search_step.log" || failed+=(search_bench)
fi

if ! skip search_run; then
    echo "== a short real search on the GPU (--backend torch --precision bf16)"
    data=${SEARCH_DATA:-}
    if [[ -z $data ]]; then
        $PY -m deepaa_data.synthetic "$OUT/search_data" --n_train 10000 --n_test 1000 >/dev/null
        data="npz:$OUT/search_data"
    fi
    classes=$($PY -c "from deepaa_data import dataset_classes as d; print(d('$data'))")
    rm -rf "$OUT/search_run"
    if timeout "${SEARCH_RUN_TIMEOUT:-300}" $PY DeepAA_search.py --backend torch \
        --precision bf16 --dataset "$data" --n_classes "$classes" --preset paper \
        --nb_epochs 3 --n_policies 2 --search_bno 6 --debug --results_dir "$OUT/search_run" \
        > "$OUT/search_run.log" 2>&1; then
        grep -a "DeepAA search\|pretrain epoch\|accuracy\|step .*compute\|written" \
            "$OUT/search_run/search.log"
        timeout "${AGREE_TIMEOUT:-240}" $PY benchmarks/search_agreement.py \
            --variants "torch fp32,torch bf16,torch compile" --model WRN_40_2 \
            --n_classes "$classes" --dataset "$data" --pretrain_size 5000 --seed 1 \
            --points 8 --exp_g 2 --factor 1 --chunk 256 --steps 2 \
            --weights "$OUT/search_run/pretrained_WRN_40_2.pt" 2>&1 \
            | tee "$OUT/search_agreement.log" || failed+=(search_agreement)
    else
        tail -20 "$OUT/search_run.log"
        failed+=(search_run)
    fi
fi

if (( ${#failed[@]} )); then
    echo "failed: ${failed[*]} (logs in $OUT)"
    exit 1
fi
