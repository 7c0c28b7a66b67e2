#!/usr/bin/env bash
# One script for a machine with one NVIDIA GPU (<= 8 minutes): the CUDA tests, the default experiment, GPT-2
# small's MFU in bf16 and the seed 004 GPU recipe for a few minutes; a table in results/gpu-check/summary.md.
#   bash benchmarks/gpu_check.sh            # after make setup-dev with a CUDA build of torch
# Each step has its own time limit; a step that fails or runs out is marked so and the next one runs.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=results/gpu-check
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing measured" | tee "$SUMMARY"
    exit 2
fi

{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")'
    echo
    echo "| step | limit | status | seconds | log |"
    echo "|---|---|---|---|---|"
} > "$SUMMARY"

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2; shift 2
    local log="$OUT/$name.log" start status
    start=$(date +%s)
    if timeout "$limit" "$@" > "$log" 2>&1; then status=passed; else
        case $? in 124) status="stopped at its limit";; *) status=failed;; esac
    fi
    echo "| $name | ${limit} s | $status | $(( $(date +%s) - start )) | $log |" >> "$SUMMARY"
    echo "gpu_check: $name: $status"
}

step cuda-tests 90 "$PY" -m pytest -q tests/gpu tests/techniques/test_precision.py -p no:cacheprovider
step default-experiment 120 "$PY" -m leantrain run experiments/default.toml --out "$OUT/default" --force --quiet
step gpt2-mfu 90 "$PY" benchmarks/models.py --device cuda --repeats 1
step seed004-gpu 150 "$PY" -m leantrain run experiments/seed004-gpu.toml --out "$OUT/seed004-gpu" --force --quiet

{
    echo
    echo "## Default experiment"
    [ -f "$OUT/default/summary.md" ] && sed -n '1,40p' "$OUT/default/summary.md"
    echo
    echo "## GPT-2 small and the zoo (benchmarks/models.py --device cuda)"
    tail -n 30 "$OUT/gpt2-mfu.log"
} >> "$SUMMARY"
echo "gpu_check: table in $SUMMARY"
