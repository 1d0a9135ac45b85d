#!/usr/bin/env bash
# Back-translation on Multi30k de→en (docs/corpora.md#back-translation).
#
# The training data is cut in halves: the first 14,500 pairs are the parallel data, the second half's English
# side plays monolingual text. An en→de model trained on the parallel half back-translates that English into
# German; de→en is then trained twice for the same time: on the parallel half alone (baseline), and on it plus
# the synthetic pairs, tagged <BT> (Caswell et al. 2019). Both print their test_2016_flickr scores.
#
#   MT_DATA_DIR=../shared/data/multi30k bash scripts/experiment_backtranslation.sh [OUT] [MINUTES]
#
# OUT (default outputs/backtranslation) holds the halves, the three runs and the synthetic corpus; each model
# trains MINUTES (default 15) with the de→en CPU recipe. The back-translation is resumable (mt.translate
# output=): run the script again after a kill and each finished step is skipped.
set -euo pipefail
OUT=${1:-outputs/backtranslation}
MINUTES=${2:-15}
DATA=${MT_DATA_DIR:?set MT_DATA_DIR to the Multi30k directory}
PYTHON=${PYTHON:-python}
HALF=14500
TIME=$(printf "00:00:%02d:00" "$MINUTES")

mkdir -p "$OUT/parallel" "$OUT/synthetic"
if [ ! -s "$OUT/parallel/train.en" ]; then
  # awk reads to the end (head would stop early, and pipefail would take zcat's SIGPIPE for a failure)
  zcat "$DATA/train.de.gz" | awk -v n=$HALF 'NR <= n' > "$OUT/parallel/train.de"
  zcat "$DATA/train.en.gz" | awk -v n=$HALF 'NR <= n' > "$OUT/parallel/train.en.tmp"
  zcat "$DATA/train.en.gz" | tail -n +$((HALF + 1)) > "$OUT/synthetic/train.en"
  for split in val test_2016_flickr; do
    for lang in de en; do ln -sf "$(realpath "$DATA/$split.$lang.gz")" "$OUT/parallel/$split.$lang.gz"; done
  done
  mv "$OUT/parallel/train.en.tmp" "$OUT/parallel/train.en"
fi

train() {  # RUN_DIR, overrides...: one recipe run, skipped when it has finished before
  local run_dir=$1
  shift
  if [ -f "$run_dir/selection.json" ]; then echo "done before: $run_dir"; return; fi
  "$PYTHON" -m mt.train experiment=multi30k_de_en_cpu trainer.max_time="$TIME" data.path="$OUT/parallel" \
    trainer.enable_progress_bar=false hydra.run.dir="$run_dir" "$@"
}

# 1. en→de on the parallel half, for back-translation.
train "$OUT/en_de" data.src_lang=en data.tgt_lang=de test_after_training=false
# 2. The monolingual English into German (beam 5), in order, resumably.
"$PYTHON" -m mt.translate checkpoint="$OUT/en_de/checkpoints/best.ckpt" input="$OUT/synthetic/train.en" \
  output="$OUT/synthetic/train.de" beam=5
# 3. de→en on the parallel half: the baseline.
train "$OUT/baseline"
# 4. de→en on the parallel half and the tagged synthetic half, drawn 1:1 (each pair once an epoch).
train "$OUT/with_bt" "data.corpora=[{},{path:$OUT/synthetic,tag:'<BT>',valid:false}]"
for run in baseline with_bt; do
  "$PYTHON" -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], 'test_2016 BLEU', s['bleu'])" \
    "$OUT/$run/test_scores.json" "$run"
done
