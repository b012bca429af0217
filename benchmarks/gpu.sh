#!/usr/bin/env bash
# Every GPU check in one pass, for a machine with a CUDA GPU that is lent for minutes, not hours:
# the training and embedding benchmarks at GPU sizes, then the CUDA paths end to end (eic demo,
# eic train under torchrun, the fast test lane with CUDA visible). Each step has its own time limit,
# so one that hangs cannot take the others with it; each writes OUT/<step>.log and prints its tail.
#
#     bash benchmarks/gpu.sh [OUT]        (PYTHON=python3 by default; run from the repository root)
set -u
out=${1:-gpu-results}
mkdir -p "$out"
py=${PYTHON:-python3}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, keep its log, show its tail
    local name=$1 limit=$2 started=$SECONDS rc
    shift 2
    timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - started)) s (limit $limit s)"
    tail -n "${TAIL:-14}" "$out/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$py" -c "import torch, torchvision, polars, pydantic, typer; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'polars', polars.__version__, 'pydantic', pydantic.__version__, 'typer', typer.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

# The data pipeline against the loop on tensors in memory, at a small and at a usual GPU size.
# 64 batches an epoch: with fewer, starting the loader workers weighs on the first (decoding) epoch's rate.
step train-resnet18 100 "$py" benchmarks/train.py --arch resnet18 --input-size 128 --batch-size 64 --batches 64 \
    --workers 4 8 12
step train-resnet50 100 "$py" benchmarks/train.py --arch resnet50 --input-size 224 --batch-size 128 --batches 32 \
    --workers 8 12
# JPEGs decoded on the GPU (nvJPEG) against the loader workers: the first epoch's rate against the cached one.
step train-decode 120 "$py" benchmarks/train.py --arch resnet18 --input-size 128 --batch-size 64 --batches 64 \
    --workers 8 --decode cpu gpu
# The pilot's 10-fold protocol: a frozen backbone and a linear probe against fine-tuning (decode auto: on the GPU),
# then eic embed with the workers decoding, against the forward-only rate.
step embed 110 "$py" benchmarks/embed.py --per-level 40 --epochs 3 --batch-size 64
step embed-cpu-decode 110 "$py" benchmarks/embed.py --per-level 40 --epochs 1 --batch-size 64 --decode cpu
# The CUDA paths end to end: AMP, channels_last, pinned memory, Grad-CAM, and DDP under torchrun.
step demo 60 "$py" -m europeana_imgcls demo --output-dir "$work/demo" --epochs 3
step torchrun 45 "$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m europeana_imgcls train \
    "$work/demo/images" --output-dir "$work/ddp" --folds 3 --epochs 2 --input-size 64 --weights none --batch-size 16
# The same images labelled with each decode path: the share of identical top-1 labels (goal: at least 99 %).
step decode-agreement 60 "$py" benchmarks/decode_agreement.py "$work/demo/run" "$work/demo/images"
step tests 90 "$py" -m pytest -m "not slow" -n 8 -q -p no:cacheprovider -p no:benchmark --no-header
rm -rf "$work"
