#!/usr/bin/env bash
# One-GPU check, under 5 minutes: model=base in bf16 for 300 steps on synthetic pairs, then the
# training speed (target tokens/s), the model FLOPs utilisation against the card's bf16 peak, and
# greedy / beam decoding speed of the trained weights.
#   bash scripts/gpu_check.sh [mt.train overrides, e.g. trainer.compile=true]   # PEAK_TFLOPS=989 (H100/H200 dense bf16) unless set
# Needs a CUDA build of torch with mt's dependencies (TORCH_SPEC=... bash scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-/tmp/mt-gpu-check}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
rm -rf "$OUT" && mkdir -p "$OUT"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
$PY scripts/make_synthetic_corpus.py --pairs 300000 --out "$OUT/data" --quiet
$PY -m mt.train model=base data=local data.path="$OUT/data" data.max_tokens=12000 data.num_workers=2 \
  tokenizer.vocab_size=32000 trainer=gpu trainer.max_steps=300 trainer.max_time=null trainer.log_every_n_steps=10 \
  trainer.limit_val_batches=0 validation.decode=none test_after_training=false trainer.enable_progress_bar=false \
  hydra.run.dir="$OUT/run" "$@"
$PY - "$OUT/run" "$PEAK_TFLOPS" <<'PYTHON'
import csv, statistics, sys, torch
run, peak = sys.argv[1], float(sys.argv[2]) * 1e12
rates = [float(r["train/tgt_tokens_per_s"]) for r in csv.DictReader(open(f"{run}/csv/metrics.csv")) if r.get("train/tgt_tokens_per_s")]
ckpt = torch.load(f"{run}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
m = ckpt["hyper_parameters"]["model"]; d, ff, vocab = m["d_model"], m["d_ff"], ckpt["hyper_parameters"]["tgt_vocab_size"]
enc = m["encoder_layers"] * (4 * d * d + 2 * d * ff)            # weights an encoder token passes through
dec = m["decoder_layers"] * (8 * d * d + 2 * d * ff) + d * vocab  # self + cross attention, FFN, output layer
flops_per_tgt_token = 6 * (enc + dec)  # forward + backward, 2 FLOPs a multiply-add; source length ~ target length
rate = statistics.median(rates[1:] or rates)
print(f"train: median {rate:,.0f} target tokens/s, {flops_per_tgt_token * rate / 1e12:.1f} TFLOP/s, MFU {flops_per_tgt_token * rate / peak:.1%} of {peak / 1e12:.0f} TFLOP/s")
PYTHON
for beam in 1 5; do
  /usr/bin/time -f "decode beam $beam: %e s" $PY -m mt.evaluate checkpoint="$OUT/run/checkpoints/last.ckpt" \
    source="$OUT/data/test.de.gz" reference="$OUT/data/test.en.gz" beam=$beam | tail -1
done
