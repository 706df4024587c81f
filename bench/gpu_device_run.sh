#!/usr/bin/env bash
# Every GPU row of issue 28's goals table (bench/RESULTS.md, "GPU") in one command, for a
# GPU machine without network (the `device` tool of this workplace): carried wheels, the
# model's config and tokenizer only (random weights built there), then bench/run.py once a
# row, ours and TRL 0.29.1 side by side in the same call on the same card.
#
#   bench/gpu_device_run.sh CONFIG_DIR WHEELS_DIR OUT_DIR
#
# CONFIG_DIR: config.json + tokenizer files of the SmolLM2-135M model (see
#   bench/random_model.py); the larger shapes (bench/shapes/) use its tokenizer.
# WHEELS_DIR: wheels installed with --no-deps into a --target folder put first on the path
#   (transformers/peft at the app's pins, trl==0.29.1 and what it needs that the machine
#   lacks, sqlite-utils and its small deps); empty: use what is installed.
# Rows, in this order (ROWS picks some, e.g. ROWS="static perrow" for a second call):
#   ppo64   PPO, 135M, 64 prompts a step (512 rows): ours, TRL with a LoRA policy (the
#           goal's side), TRL with four full models (the second row)
#   ppo8    PPO, 135M, the fixed workload (8 prompts): ours, TRL with a LoRA policy
#   grpo    GRPO, 135M, 16 prompts x 8 answers (no vLLM on either side): ours, TRL
#   dpo     DPO, 135M, the fixed workload: ours, TRL (LoRA on both)
#   sft17   SFT, the SmolLM2-1.7B shape, 256 examples a step (>= 16k real tokens): ours
#           (its goal is our MFU, not a ratio)
#   static  ours only, PPO at 64 and GRPO 16 x 8 with decode_cache=static (transformers'
#           static KV cache, its decoding step compiled): against ppo64/grpo's dynamic
#   perrow  ours only, PPO at 64 with RLHF_LAB_STACK_ROWS=0 (one forward a packed row, the
#           CPU path): what stacking the rows gained
#   liger   ours only, DPO and GRPO 16 x 8 with liger-kernel's fused linear cross-entropy
#           (RLHF_LAB_LIGER=1; every other row runs without it): against dpo/grpo
# Environment: PYTHON (python3), DEADLINE (seconds for the whole script, 570), ROWS (all
#   rows above), LAYERS (only this many layers in every model: a smoke test on a CPU),
#   EXTRA (more run.py arguments, after each row's own: "--warmup 1 --measured 1 --batch-size 8"
#   makes a smoke test), SIDES (ours,trl), SCALE (multiplies each row's time budget: a
#   slow CPU).
# Writes OUT_DIR/log.txt, OUT_DIR/env.txt, OUT_DIR/rows.tar.gz (one JSON per row, ROW.json,
# renewed after each row; bench/run.py --table ROW.json prints its table) and
# OUT_DIR/work.tar.gz (the per-side logs and raw results: bench/run.py --from-work): four
# files, as the device tool brings back at most eight. A row that finds too little time left is skipped
# (said in the log): rerun it with ROWS on the still-warm machine.
set -u
CFG=$1 WHL=$2 OUT=$3
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-570}
ROWS=${ROWS:-ppo64 ppo8 grpo dpo sft17 static perrow liger}
SITE=${SITE:-/tmp/bench-site}
MODEL=${MODEL_DIR:-/tmp/bench-random-model}
T0=$SECONDS
LOG=$OUT/log.txt
JSON=${JSON_DIR:-/tmp/bench-rows}
mkdir -p "$OUT" "$JSON"
say() { echo "[gpu-run +$((SECONDS - T0))s] $*" | tee -a "$LOG" >&2; }

if ls "$WHL"/*.whl >/dev/null 2>&1; then
  say "installing $(ls "$WHL"/*.whl | wc -l) wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHL"/*.whl >>"$LOG" 2>&1 || { say "wheel install FAILED"; exit 1; }
  export PYTHONPATH=$SITE RLHF_LAB_BENCH_PYTHONPATH=$SITE
fi
export RLHF_LAB_TRL_PYTHON=$(command -v "$PY") PYTHONUNBUFFERED=1
export RLHF_LAB_LIGER=0   # liger-kernel (when carried) only in the row "liger"
command -v setsid >/dev/null || setsid() { "$@"; }  # then only the measurement timeouts bound a call

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" - <<'PY' 2>&1
import importlib, importlib.metadata, platform, time
import torch
v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
for m in ("transformers", "peft", "accelerate", "trl", "datasets", "tokenizers", "sqlite-utils",
          "liger-kernel", "flash-attn"):
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
"$PY" bench/random_model.py "$CFG" "$MODEL" ${LAYERS:+--layers $LAYERS} 2>&1 | tail -1 \
  | tee -a "$LOG" || exit 1

# one bench/run.py call, in its own process group, ended (with its measurements) at its
# budget or at the script's deadline, whichever comes first; ENV_EXTRA: variables for it
bench() {
  local name=$1 budget=$(( $2 * ${SCALE:-1} )); shift 2
  local left=$((DEADLINE - (SECONDS - T0) - 10))
  (( budget > left )) && budget=$left
  if (( budget < 30 )); then say "$name: skipped (no time left: rerun with ROWS=...)"; return; fi
  say "$name: bench/run.py $* (budget ${budget}s)"
  env ${ENV_EXTRA:-} setsid "$PY" bench/run.py --model "$MODEL" --sides "${SIDES:-ours,trl}" \
    --keep --timeout "$budget" --json "$JSON/$name.json" "$@" ${EXTRA:-} >/dev/null 2>>"$LOG" &
  local pid=$!
  ( sleep "$budget"; kill -TERM -- -"$pid" 2>/dev/null; sleep 3; kill -KILL -- -"$pid" 2>/dev/null ) &
  local watcher=$!
  wait "$pid"; local rc=$?
  kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
  say "$name: exit $rc"
  tar czf "$OUT/rows.tar.gz" -C "$JSON" . 2>/dev/null
}
want() { [[ " $ROWS " == *" $1 "* ]]; }
BIG="--batch-size 64 --rows 512"
GRPO="--stage grpo --batch-size 16 --group-size 8 --rows 64"

want ppo64 && bench ppo64 150 --stage ppo $BIG
want ppo8 && bench ppo8 100 --stage ppo --no-trl-four
want grpo && bench grpo 100 $GRPO
want dpo && bench dpo 90 --stage dpo
want sft17 && SIDES=ours bench sft17 130 --stage sft --shape smollm2-1.7b ${LAYERS:+--layers $LAYERS} \
  --batch-size 256 --rows 512 --warmup 1 --measured 3
if want static; then
  SIDES=ours bench static-ppo64 90 --stage ppo $BIG --decode-cache static
  SIDES=ours bench static-grpo 70 $GRPO --decode-cache static
fi
want perrow && ENV_EXTRA=RLHF_LAB_STACK_ROWS=0 SIDES=ours bench perrow-ppo64 70 --stage ppo $BIG
if want liger; then
  ENV_EXTRA=RLHF_LAB_LIGER=1 SIDES=ours bench liger-dpo 50 --stage dpo
  ENV_EXTRA=RLHF_LAB_LIGER=1 SIDES=ours bench liger-grpo 60 $GRPO
fi
tar czf "$OUT/work.tar.gz" --exclude='*/home' --exclude='*/data' -C bench/out \
  $(cd bench/out && ls -d run-* 2>/dev/null) 2>/dev/null
say "done"
