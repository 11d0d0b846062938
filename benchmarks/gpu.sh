#!/usr/bin/env bash
# The GPU run of issue 17, prepared for a lent H100/H200 session: under 10 minutes, nothing fetched.
#
#     bash benchmarks/gpu.sh            # from the repository root; results in $OUT or ./bench-out
#
# It installs nothing (the device machine has no network). It expects a CUDA build of torch and
# the project's dependencies (diffusers, transformers, accelerate, safetensors, the server extras:
# fastapi, uvicorn, ...) already installed, checks them first and says clearly what is missing.
# sdgate itself need not be installed: without it, the script runs it from ./src (PYTHONPATH).
#
# Three stages, each under its own timeout (120 + 260 + 180 s; with the checks, under 10 minutes); a
# stage cut off by its timeout keeps every figure it measured (gpu.py rewrites its JSON after each step):
#   1. sd15-eager    SD 1.5 512x512, 25 steps, CFG 7, fp16: plain diffusers, the engine, HTTP 1/8/32
#   2. sd15-compile  the same with --compile --warmup 512x512:1,8,32 --batch-max 32 (the targets:
#                    <= 0.15 s engine, <= 0.20 s HTTP, >= 10 images/s with 32 clients)
#   3. sdxl-eager    SDXL 1024x1024, 25 steps, CFG 7 (targets <= 0.6 s, >= 1.6 images/s with 32)
# Out: <stage>.json, <stage>.md, <stage>.log per stage, and summary.md (all tables, in order; a stage
# cut off by its budget shows the rows it measured).
# Budgets can be changed by environment: SD15_EAGER_S, SD15_COMPILE_S, SDXL_EAGER_S.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/bench-out}"
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sdgate-gpu-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PY="${PYTHON:-python}"
SD15_EAGER_S="${SD15_EAGER_S:-120}"
SD15_COMPILE_S="${SD15_COMPILE_S:-260}"
SDXL_EAGER_S="${SDXL_EAGER_S:-180}"
START=$(date +%s)

say() { echo "[gpu.sh +$(($(date +%s) - START))s] $*" | tee -a "$OUT/summary.log"; }

# --- 1. What must be here -------------------------------------------------------------------------
if ! "$PY" -c "import sdgate" 2>/dev/null; then
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    say "sdgate is not installed: running it from $REPO/src"
fi
"$PY" - <<'EOF' || { echo "gpu.sh: missing prerequisites (see above); nothing was run" >&2; exit 2; }
import importlib, sys
missing = []
for name in ("torch", "diffusers", "transformers", "accelerate", "safetensors", "httpx", "fastapi",
             "uvicorn", "typer", "sqlalchemy", "alembic", "pydantic_settings", "PIL", "sdgate"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # an ImportError, or a broken install
        missing.append(f"{name} ({exc.__class__.__name__}: {exc})")
if missing:
    print("gpu.sh: these do not import:\n  " + "\n  ".join(missing), file=sys.stderr)
    print("install the project (pip install -e '.[server]') and a CUDA build of torch first", file=sys.stderr)
    sys.exit(1)
import torch
if not torch.cuda.is_available():
    print(f"gpu.sh: torch {torch.__version__} sees no CUDA device (a CPU build, or no GPU)", file=sys.stderr)
    sys.exit(1)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    | tee -a "$OUT/summary.log"

# --- 2. The stages --------------------------------------------------------------------------------
COMMON=(--device cuda --steps 25 --cfg 7 --model-cache "$WORK/models" --compile-cache "$WORK/compile-cache")

stage() {  # stage NAME BUDGET_S ARGS...
    local name="$1" budget="$2"
    shift 2
    rm -f "$OUT/$name.json" "$OUT/$name.md"  # an old run's server pid must not be killed below
    say "stage $name (budget ${budget}s): benchmarks/gpu.py $*"
    timeout -k 20 "$budget" "$PY" benchmarks/gpu.py "${COMMON[@]}" "$@" \
        --out "$OUT/$name.json" --markdown "$OUT/$name.md" >"$OUT/$name.log" 2>&1
    local rc=$?
    # A stage killed mid-run must not leave its server holding the GPU for the next one.
    local pid
    pid=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1])).get('server_pid', ''))" \
        "$OUT/$name.json" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null; sleep 3; kill -9 "$pid" 2>/dev/null
    fi
    case $rc in
        0) say "stage $name: done" ;;
        124|137) say "stage $name: cut off by its ${budget}s budget (partial figures in $name.json)" ;;
        *)
            say "stage $name: failed ($rc); the end of its log:"
            tail -n 25 "$OUT/$name.log" | tee -a "$OUT/summary.log"
            ;;
    esac
    if [ ! -s "$OUT/$name.md" ] && [ -s "$OUT/$name.json" ]; then  # cut off: the rows it measured
        "$PY" benchmarks/gpu.py --table-from "$OUT/$name.json" >"$OUT/$name.md" 2>>"$OUT/$name.log"
    fi
    {
        echo "## $name (exit $rc)"
        echo
        cat "$OUT/$name.md" 2>/dev/null || echo "(no table: see $name.log)"
        echo
    } >>"$OUT/summary.md"
}

: >"$OUT/summary.md"
stage sd15-eager "$SD15_EAGER_S" --arch sd15 --size 512 --clients 1,8,32 --requests 8,32,64 --repeats 5
stage sd15-compile "$SD15_COMPILE_S" --arch sd15 --size 512 --clients 1,8,32 --requests 8,32,64 --repeats 5 \
    --compile --warmup "512x512:1,8,32" --batch-max 32
stage sdxl-eager "$SDXL_EAGER_S" --arch sdxl --size 1024 --clients 1,8,32 --requests 2,8,32 --repeats 3 \
    --warmup-calls 1
say "all stages done; tables in $OUT/summary.md"
cat "$OUT/summary.md"
