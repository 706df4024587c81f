#!/usr/bin/env bash
# The GPU rows of bench/RESULTS.md in one command, for a GPU machine without network
# (the `device` tool of this workplace): carried wheels, the model's config and tokenizer
# only (random weights built there), then bench/run.py at the fixed workload and at a
# larger batch, ours and TRL side by side.
#
#   bench/gpu_device_run.sh CONFIG_DIR WHEELS_DIR OUT_DIR
#
# CONFIG_DIR: config.json + tokenizer files of the model (see bench/random_model.py).
# WHEELS_DIR: wheels installed with --no-deps into a --target folder put first on the path
#   (transformers/peft at the app's pins, trl==0.29.1 and what it needs that the machine
#   lacks, sqlite-utils and its small deps); empty: use what is installed.
# Environment: PYTHON (python3), DEADLINE (seconds for the whole script, 390),
#   BIG_BATCH (64), BIG_ROWS (512), BIG_STAGES ("sft reward ppo"), EXTRA (more run.py
#   arguments, e.g. "--warmup 1 --measured 2" for a smoke test), SIDES (ours,trl).
# Writes OUT_DIR/log.txt, OUT_DIR/env.txt, one JSON per bench/run.py call and
# OUT_DIR/work.tar.gz (the per-side logs and raw results: bench/run.py --from-work).
set -u
CFG=$1 WHL=$2 OUT=$3
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-390}
SITE=${SITE:-/tmp/bench-site}
MODEL=${MODEL_DIR:-/tmp/bench-random-model}
T0=$SECONDS
LOG=$OUT/log.txt
mkdir -p "$OUT"
say() { echo "[gpu-run +$((SECONDS - T0))s] $*" | tee -a "$LOG" >&2; }

if ls "$WHL"/*.whl >/dev/null 2>&1; then
  say "installing $(ls "$WHL"/*.whl | wc -l) wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHL"/*.whl >>"$LOG" 2>&1 || { say "wheel install FAILED"; exit 1; }
  export PYTHONPATH=$SITE RLHF_LAB_BENCH_PYTHONPATH=$SITE
fi
export RLHF_LAB_TRL_PYTHON=$(command -v "$PY") PYTHONUNBUFFERED=1
command -v setsid >/dev/null || setsid() { "$@"; }  # then only the measurement timeouts bound a call

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" - <<'PY' 2>&1
import importlib, importlib.metadata, platform, time
import torch
v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
for m in ("transformers", "peft", "accelerate", "trl", "datasets", "tokenizers", "sqlite-utils"):
    try:
        importlib.import_module(m.replace("-", "_"))
        v[m] = importlib.metadata.version(m)
    except Exception as exc:  # noqa: BLE001
        v[m] = f"missing ({type(exc).__name__}: {exc})"
if torch.cuda.is_available():
    v["gpu"] = torch.cuda.get_device_name(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    v["bf16_matmul_8192_tflops"] = round(10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12, 1)
print(v)
PY
} > "$OUT/env.txt"
cat "$OUT/env.txt" | tee -a "$LOG"

say "building the random-weight model in $MODEL"
"$PY" bench/random_model.py "$CFG" "$MODEL" 2>&1 | tail -1 | tee -a "$LOG" || exit 1

# one bench/run.py call, in its own process group, ended (with its measurements) at its
# budget or at the script's deadline, whichever comes first
bench() {
  local name=$1 budget=$2; shift 2
  local left=$((DEADLINE - (SECONDS - T0) - 10))
  (( budget > left )) && budget=$left
  if (( budget < 20 )); then say "$name: skipped (no time left)"; return; fi
  say "$name: bench/run.py $* (budget ${budget}s)"
  setsid "$PY" bench/run.py --model "$MODEL" --sides "${SIDES:-ours,trl}" --keep \
    --timeout "$budget" --json "$OUT/$name.json" ${EXTRA:-} "$@" >/dev/null 2>>"$LOG" &
  local pid=$!
  ( sleep "$budget"; kill -TERM -- -"$pid" 2>/dev/null; sleep 3; kill -KILL -- -"$pid" 2>/dev/null ) &
  local watcher=$!
  wait "$pid"; local rc=$?
  kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
  say "$name: exit $rc"
}

bench default 200 --stage all
for stage in ${BIG_STAGES:-sft reward ppo}; do
  bench "big-$stage" 75 --stage "$stage" --batch-size "${BIG_BATCH:-64}" --rows "${BIG_ROWS:-512}"
done
tar czf "$OUT/work.tar.gz" --exclude='*/home' --exclude='*/data' -C bench/out . 2>/dev/null
say "done"
