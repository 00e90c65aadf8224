#!/usr/bin/env bash
# `make demo`: the pipeline end to end on embedded data (real faces that ship
# with scikit-image and insightface; no download of weights or datasets).
#   synth faces -> annotate -> build shards -> train a tiny model -> eval -> infer.
# A tiny model trained for 20 CPU steps answers badly: the demo shows the
# machinery end to end, not FiFa's accuracy.
set -euo pipefail
out=${1:-demo_out}
fifa=.venv/bin/fifa
mkdir -p "$out"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. The Facial Image Concept Tree"
$fifa fict
$fifa fict --concept "middle part of left eyebrow"

step "2. FiFa-Annotator on a real face (skimage's astronaut): Region Masks for all 184 concepts"
$fifa prep sample astronaut --out "$out/astronaut.png"
$fifa prep regions "$out/astronaut.png" --out "$out/astronaut_regions.npz" --overlay "$out/astronaut_regions.png"

step "3. Synthetic forgeries with known artifact masks, from the offline faces (one person per split)"
$fifa data synth --out "$out/synth" --n 24 --n-real 12 --size 256 --quiet

step "4. FiFa-Annotator on every face: Region Masks; for fakes also Steps 2 and 5 (known masks as Step 1)"
$fifa prep batch "$out/synth/real" --out "$out/ann/real" --workers 2 --quiet
$fifa prep batch "$out/synth/fake" --out "$out/ann/fake" --artifacts "$out/synth/mask" --workers 2 --quiet

step "5. FiFa-11 records and masks as ArrayRecord shards (offline template explainer), Table 2 style counts"
$fifa data build "$out/synth" --annotations "$out/ann" --out "$out/data" --explainer offline --quiet
$fifa data stats "$out/data" --check
$fifa data show "$out/data/qa/test/i-age-test-00000.array_record" 0 --out "$out/record_i-age.png"
$fifa data show "$out/data/qa/test/b-age-test-00000.array_record" 0 --out "$out/record_b-age.png"

step "6. FiFa-MLLM at paper size, initialised abstractly (no memory allocated)"
$fifa params --config paper

step "7. Train the tiny FiFa-MLLM on those shards (CPU, 20 steps, all 11 tasks mixed by Table 17; rerun to resume)"
$fifa train --config configs/tiny_cpu.yaml --workdir "$out/train" --set data.root="$out/data" --set train.progress=false
python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(f'loss {r[0][\"train/loss\"]:.3f} (step {r[0][\"step\"]}) -> {r[-1][\"train/loss\"]:.3f} (step {r[-1][\"step\"]}); metrics in $out/train/metrics.jsonl, TensorBoard in $out/train/tb')" "$out/train/metrics.jsonl"

step "8. Evaluate on the synthetic test split: the Table 3 report (data parallel over the 8 host devices)"
$fifa eval --checkpoint "$out/train" --data "$out/data" --split test --out "$out/eval" \
  --max-per-task 4 --batch-size 8 --max-new-tokens 48

step "9. Ask the model about the astronaut: all 11 tasks, answer JSON and mask overlays"
$fifa infer --checkpoint "$out/train" --image "$out/astronaut.png" --task all \
  --region "nose" --box "180,80,330,260" --out "$out/infer" --max-new-tokens 48
echo
echo "demo outputs: $out/"
ls -1 "$out"
