#!/usr/bin/env bash
# bash bench/gpu_session.sh prepare   # once, on a machine with PyPI, in the checkout's root
# bash bench/gpu_session.sh           # on the CUDA machine, in the checkout's root
#
# Every GPU measurement and check of the project in one command of about 8 minutes on an
# H100-class card, its results under $OUT (default ./gpu-session-out):
#   1. bench/cuda_checks.py  - the overnight recipes' steady-state step alone and under DDP
#      (a process group of one), bf16 and fp16, with torch.cuda.set_sync_debug_mode around
#      it: img/s, ms/step, MFU, peak memory, DDP on/off, every host sync with its line
#      (about 2 min, at most 200 s);
#   2. bench/gpu_measure.py  - the reference I-JEPA step against ours eager, compiled and with
#      the real data pipeline: img/s, MFU, peak memory, ratio to the reference (at most 300 s;
#      its rows are logged as they come, so a cut run still gives the finished ones).
# Files: gpu.txt, cuda_checks.{md,json,log}, gpu_measure.{md,json,log} (7 files). Both tables
# are printed last. Exit status: cuda_checks.py's (0 clean, 1 a sync, 3 watch not live, 4 a
# cell failed; 124 timed out), or 2 when the trainer's dependencies are missing.
#
# `prepare` needs network access to PyPI and writes two ignored folders the GPU machine needs,
# since its image has torch but not pydantic, and the reference lives outside the checkout:
#   .whl/                   pydantic and its dependencies as x86-64 CPython 3.12 wheels, the
#                           versions installed beside this project (PYTHON, default .venv's)
#   shared/reference-bench  a copy of ../shared/reference-bench (bench/gpu_measure.py finds it)
# Both are added to the repository's info/exclude; send them along with the checkout.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    py=${PYTHON:-.venv/bin/python}
    [ -x "$py" ] || py=python3
    pins=$("$py" - <<'EOF'
import importlib.metadata as m
names = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions"]
print(" ".join(f"{n}=={m.version(n)}" for n in names))
EOF
    ) || { echo "prepare: $py has no pydantic installed (set PYTHON)"; exit 2; }
    rm -rf .whl && mkdir -p .whl
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $pins || exit 2
    if [ ! -d shared/reference-bench ] && [ -d ../shared/reference-bench ]; then
        mkdir -p shared && cp -r ../shared/reference-bench shared/reference-bench
    fi
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    for p in /.whl/ /shared/reference-bench/ /gpu-session-out/; do
        grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >>"$exclude"
    done
    ls .whl
    [ -d shared/reference-bench ] || echo "prepare: no ../shared/reference-bench (reference rows will say so)"
    exit 0
fi

OUT=${OUT:-$PWD/gpu-session-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || {
        echo "no pydantic and no .whl/: run 'bash bench/gpu_session.sh prepare' first"
        exit 2
    }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} >"$OUT/gpu.txt" 2>&1

timeout 200 python3 bench/cuda_checks.py --precision bf16 --precision fp16 --out "$OUT" \
    >"$OUT/cuda_checks.log" 2>&1
checks=$?
timeout 300 python3 bench/gpu_measure.py --out "$OUT" >"$OUT/gpu_measure.log" 2>&1
measure=$?

cat "$OUT/gpu.txt"
for name in gpu_measure cuda_checks; do
    if [ -f "$OUT/$name.md" ]; then cat "$OUT/$name.md"; else tail -n 25 "$OUT/$name.log"; fi
done
python3 - "$OUT/cuda_checks.json" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError):
    sys.exit(0)
for r in rows:
    for site in r.get("sync_sites", []) + r.get("documented_sites", []):
        print(f"sync in {r['recipe']} / {r['mode']}: {site}")
EOF
echo "cuda_checks.py exit $checks, gpu_measure.py exit $measure"
exit "$checks"
