#!/usr/bin/env bash
# Issue 17's measurements in one call of a lent GPU (bench/gpu_check.py says what each
# section does).  Run from the repository root:
#   OUT=results bash bench/gpu_check.sh        (SMOKE=1: tiny shapes on the CPU)
# Each section is its own process with its own time limit, the most important first, so
# a slow compile or an out-of-memory leaves the other figures.  Writes OUT/*.json, one
# log and OUT/report.md (the table for bench/RESULTS.md).
set -u
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}
LOG="$OUT/log.txt"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
  >"$OUT/nvidia-smi.txt" 2>&1
# The image's flax / orbax are used when fifa_jax imports with them; otherwise the
# versions this repository is tested with, if carried as wheels in .whl/.
if ! $PY -c "import fifa_jax.train.state, fifa_jax.models.fifa" >>"$LOG" 2>&1; then
  echo "falling back to the carried wheels" | tee -a "$LOG"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

section() {  # name, seconds
  echo "== $1 ($(date +%T))" | tee -a "$LOG"
  timeout "$2" $PY bench/gpu_check.py "$1" --out "$OUT" ${SMOKE:+--smoke} >>"$LOG" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "{\"error\": \"timed out after $2 s\"}" >"$OUT/$1.json"
  tail -n 1 "$LOG"
}

# SECTIONS="name:seconds ..." runs others (bench/gpu_check.py lists them all).
for s in ${SECTIONS:-fifa_train:210 torch:120 llm_train:100 generate:120}; do
  section "${s%%:*}" "${s##*:}"
done
$PY bench/gpu_check.py report --out "$OUT" | tee "$OUT/report.md"
