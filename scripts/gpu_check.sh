#!/usr/bin/env bash
# One-GPU check, about 5 minutes on an H100/H200 with the defaults:
#   1. tests/integration/test_gpu.py (SDPA kernels, cached decoding and search against the CPU, bf16 training with
#      fused AdamW, inductor-compiled training against eager, pinned batches, the profile), while the synthetic
#      data, its tokenizer and encoded arrays are prepared (a 1-step run into $WORK/cache); nothing is measured
#      until both are done, so the tests never share the GPU or the CPUs with a measurement;
#   2. model=base in bf16 for $STEPS steps on synthetic pairs, 12k-token batches: target tokens/s and model FLOPs
#      utilisation, and a torch.profiler summary of 10 steady steps (trainer.profile_steps: device busy share, top
#      kernels, syncs, data wait, optimizer; trace in $WORK/eager/profile);
#   3. (DECODE=1, the default) greedy and beam decoding speed of those weights, fp32 and bf16 autocast;
#   4. (SWEEP_TOKENS="25000 50000") the training of step 2 at each of these data.max_tokens: MFU against batch size;
#   5. (COMPILE=1) the synthetic training of step 2 with trainer.compile=true (trainer.max_time=COMPILE_TIME of
#      training, the phase cut 2 minutes after that whatever the compiler does; recompilations counted);
#   6. (PEERS=1) scripts/bench_train.py --device cuda: mt, the plain PyTorch loop and Hugging Face Marian of the
#      same shape on the same batches, alternating, with tokens/s, MFU and ratios;
#   7. (BIG=1) step 2 with model=big;
#   8. (FP16=1) the synthetic training of step 2 in 16-mixed (float16 with loss scaling);
#   9. (MULTI30K=DIR) the Multi30k GPU recipe for $M30K_STEPS updates (3000), then its test BLEU.
# Steps 4-9 run in that order (issue 18's priorities, the longest last), so that a device-time limit cuts the least.
# Every phase is bounded (TEST_TIMEOUT, PHASE_TIMEOUT, DECODE_TIMEOUT, and BUDGET for the whole script: a phase is
# cut at what the budget has left, less 20 s to keep its logs), so the phases that ran keep their logs in $LOGS.
#   bash scripts/gpu_check.sh [mt.train overrides]
# Environment: PYTHON (default .venv/bin/python), MODEL (base), STEPS (300), PAIRS (100000), VOCAB (32000),
# WORK (/tmp/mt-gpu-check), PEAK_TFLOPS (the card's dense bf16 peak; known for H100/H200/A100/L40S/A10/L4),
# DECODE_TIMEOUT (300 s), DECODE_SENTENCES (1000), DECODE, SWEEP_TOKENS, COMPILE, PEERS, PEER_TOKENS (12000),
# PEER_STEPS (30 a round), BIG, FP16, MULTI30K, M30K_STEPS (see above),
# TRAINER (gpu; TRAINER=cpu MODEL=tiny STEPS=50 PAIRS=3000 VOCAB=1000 DECODE_TIMEOUT=60 checks the script
# itself on a CPU in about 5 minutes; 50 steps make one tokens/s window), COMPILE_TIME (the compiled run's
# bound, 00:00:04:00), WHEELS (a folder of wheels from scripts/offline_wheels.sh, installed into $WORK/site
# first: for a machine with torch and no package registry), LOGS (a folder that receives this output as
# gpu_check.log, and after each phase logs.tgz: every run's log, metrics and profile summary, and the eager
# run's trace if under 15 MiB, so that a run stopped at a time limit keeps the phases it finished), BUDGET (seconds
# for the whole script, 0: none), TEST_TIMEOUT (300 s), PHASE_TIMEOUT (a training phase's bound, 300 s),
# M30K_TIMEOUT (the Multi30k recipe's bound, 1800 s).
# Needs a CUDA build of torch with mt's dependencies (TORCH_SPEC=... bash scripts/setup.sh, or WHEELS).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -n "${PYTHON:-}" ] || [ -x "$PY" ] || PY=python3
WORK=${WORK:-/tmp/mt-gpu-check}
LOGS=${LOGS:-}
STEPS=${STEPS:-300}
PAIRS=${PAIRS:-100000}
TRAINER=${TRAINER:-gpu}
MODEL=${MODEL:-base}
VOCAB=${VOCAB:-32000}
PEAK=${PEAK_TFLOPS:+--peak-tflops $PEAK_TFLOPS}
status=0
BUDGET=${BUDGET:-0}
START=$SECONDS
bounded() {  # bounded SECONDS COMMAND...: COMMAND for at most SECONDS, and at most what BUDGET leaves (less 20 s)
  local limit=$1; shift
  if [ "$BUDGET" -gt 0 ]; then
    local left=$((BUDGET - (SECONDS - START) - 20))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then echo "skipped: BUDGET=$BUDGET s is spent"; return 124; fi
  fi
  timeout -k 15 "$limit" "$@"
}
rm -rf "$WORK" && mkdir -p "$WORK"
if [ -n "$LOGS" ]; then
  mkdir -p "$LOGS" && LOGS=$(realpath "$LOGS") && exec > >(tee "$LOGS/gpu_check.log") 2>&1
fi
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
    || { echo "could not install the wheels in $WHEELS"; exit 1; }
  export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import torch; cuda = torch.cuda.is_available(); print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if cuda else 'no CUDA device')" \
  || exit 1
[ "$TRAINER" = cpu ] || $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1

keep() {  # the logs so far into $LOGS/logs.tgz (see LOGS above)
  [ -n "$LOGS" ] || return 0
  (cd "$WORK" && tar czf "$LOGS/logs.tgz.tmp" --ignore-failed-read ./*.log ./*/*.log ./*/csv/*.csv ./*/profile/summary.txt \
    2>/dev/null; mv "$LOGS/logs.tgz.tmp" "$LOGS/logs.tgz")
  local trace="$WORK/eager/profile/trace.json.gz"
  [ -f "$trace" ] && [ ! -f "$LOGS/trace.json.gz" ] && [ "$(stat -c %s "$trace")" -lt 15728640 ] && cp "$trace" "$LOGS/"
  return 0
}
phase() { keep; echo; echo "== $* ($(date +%T))"; }

phase "tests/integration/test_gpu.py, beside the data's preparation ($PAIRS synthetic pairs)"
bounded "${TEST_TIMEOUT:-300}" $PY -m pytest -q -p no:cacheprovider tests/integration/test_gpu.py >"$WORK/pytest.log" 2>&1 &
tests=$!
$PY scripts/make_synthetic_corpus.py --pairs "$PAIRS" --out "$WORK/data" --quiet || exit 1
run_mt() {  # run_mt RUN_NAME [overrides]: mt.train on the synthetic corpus, bounded, its output in $WORK/NAME.log
  local name=$1; shift
  bounded "${LIMIT:-${PHASE_TIMEOUT:-300}}" $PY -m mt.train model="$MODEL" data=local data.path="$WORK/data" data.cache_dir="$WORK/cache" \
    data.max_tokens=12000 data.num_workers=2 tokenizer.vocab_size="$VOCAB" trainer="$TRAINER" \
    trainer.precision=bf16-mixed trainer.max_steps="$STEPS" trainer.max_time=null trainer.log_every_n_steps=10 \
    trainer.limit_val_batches=0 validation.decode=none test_after_training=false trainer.enable_progress_bar=false \
    hydra.run.dir="$WORK/$name" "$@" >"$WORK/$name.log" 2>&1
}
train() {  # train RUN_NAME [overrides]: a short run on the synthetic corpus, then its speed and MFU
  local name=$1
  run_mt "$@" && bounded 120 $PY scripts/gpu_report.py train "$WORK/$name" $PEAK \
    || { echo "training $name failed or was cut:"; tail -20 "$WORK/$name.log"; return 1; }
}
# The tokenizer and encoded arrays every later run reads from $WORK/cache, made while the tests run.
if ! run_mt prep trainer.max_steps=1 "$@"; then
  echo "data preparation failed:"; tail -20 "$WORK/prep.log"
  kill $tests 2>/dev/null; wait $tests; keep; exit 1
fi
wait $tests || status=1
tail -15 "$WORK/pytest.log"

phase "model=$MODEL, $STEPS steps, bf16, synthetic data ($PAIRS pairs)"
PROFILE_AFTER=$((STEPS * 2 / 3))
train eager trainer.profile_after=$PROFILE_AFTER trainer.profile_steps=10 "$@" || status=1
[ -f "$WORK/eager/profile/summary.txt" ] && cat "$WORK/eager/profile/summary.txt"

if [ "${DECODE:-1}" = 1 ] && [ -f "$WORK/eager/checkpoints/last.ckpt" ]; then
  phase "decoding speed, $MODEL after $STEPS steps"
  bounded "${DECODE_TIMEOUT:-300}" $PY scripts/gpu_report.py decode "$WORK/eager/checkpoints/last.ckpt" "$WORK/data/test.de.gz" "$WORK/data/test.en.gz" \
    --sentences "${DECODE_SENTENCES:-1000}" || status=1
fi

for tokens in ${SWEEP_TOKENS:-}; do
  phase "model=$MODEL, $STEPS steps, bf16, $tokens-token batches"
  train "tokens$tokens" data.max_tokens="$tokens" "$@" || status=1
done

if [ "${COMPILE:-0}" = 1 ]; then
  phase "model=$MODEL, $STEPS steps (at most ${COMPILE_TIME:-00:00:04:00}), bf16, trainer.compile=true"
  IFS=: read -r days hours minutes seconds <<<"${COMPILE_TIME:-00:00:04:00}"
  LIMIT=$(((10#$days * 24 + 10#$hours) * 3600 + 10#$minutes * 60 + 10#$seconds + 120)) TORCH_LOGS=recompiles \
    train compiled trainer.compile=true trainer.max_time="${COMPILE_TIME:-00:00:04:00}" "$@" || status=1
  grep -c "Recompiling" "$WORK/compiled.log" | sed 's/^/dynamo recompilations: /'
fi

if [ "${PEERS:-0}" = 1 ]; then
  device=$([ "$TRAINER" = cpu ] && echo cpu || echo cuda)  # bench_train: bf16 on a GPU, fp32 on a CPU
  phase "peers: mt, plain PyTorch, Hugging Face Marian (model=$MODEL, $([ $device = cpu ] && echo fp32 || echo bf16), ${PEER_TOKENS:-12000}-token batches)"
  bounded "${PHASE_TIMEOUT:-300}" $PY scripts/bench_train.py --device "$device" --model "$MODEL" --data "$WORK/data" \
    --cache-dir "$WORK/cache" --vocab "$VOCAB" --max-tokens "${PEER_TOKENS:-12000}" --rounds 3 \
    --steps "${PEER_STEPS:-30}" --warmup 10 $PEAK 2>"$WORK/peers.log" || { status=1; tail -20 "$WORK/peers.log"; }
fi
if [ "${BIG:-0}" = 1 ]; then
  phase "model=big, $STEPS steps, bf16"
  MODEL=big train big "$@" || status=1
fi
if [ "${FP16:-0}" = 1 ]; then
  phase "model=$MODEL, $STEPS steps, 16-mixed"
  train fp16 trainer.precision=16-mixed "$@" || status=1
fi
if [ -n "${MULTI30K:-}" ]; then
  phase "Multi30k de-en GPU recipe, ${M30K_STEPS:-3000} updates"
  MT_DATA_DIR=$MULTI30K bounded "${M30K_TIMEOUT:-1800}" $PY -m mt.train experiment=multi30k_de_en_gpu trainer="$TRAINER" \
    trainer.max_steps="${M30K_STEPS:-3000}" trainer.enable_progress_bar=false test_after_training=true \
    hydra.run.dir="$WORK/multi30k" >"$WORK/multi30k.log" 2>&1 || { status=1; tail -20 "$WORK/multi30k.log"; }
  grep -E "test|BLEU|bleu" "$WORK/multi30k.log" | tail -5
  $PY scripts/gpu_report.py train "$WORK/multi30k" $PEAK || status=1
fi
phase "done, status $status"
exit $status
