#!/usr/bin/env bash
# `make demo`: the pipeline end to end on embedded data (real faces that ship
# with scikit-image and insightface; no download of weights or datasets).
#   synth faces -> annotate -> build shards -> train the cpu model -> eval on a
#   person never seen in training -> infer on the astronaut's photo (face found and cropped).
# The model is the `cpu` preset (128-px faces, 32x32 masks) trained from scratch
# for a few minutes: it shows that the recipe learns, not FiFa's paper accuracy.
set -euo pipefail
out=${1:-demo_out}
fifa=.venv/bin/fifa
py=.venv/bin/python
# One CPU device trains and evaluates this small model fastest (the Makefile's
# 8 host devices are for the sharding tests).
export XLA_FLAGS=--xla_llvm_disable_expensive_passes=true
STEPS=${DEMO_STEPS:-}
mkdir -p "$out"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. The Facial Image Concept Tree"
$fifa fict
$fifa fict --concept "middle part of left eyebrow"

step "2. FiFa-Annotator on a real face (skimage's astronaut): Region Masks for all 184 concepts"
$fifa prep sample astronaut --out "$out/astronaut.png"
$fifa prep regions "$out/astronaut.png" --out "$out/astronaut_regions.npz" --overlay "$out/astronaut_regions.png"

step "3. Synthetic forgeries with known artifact masks, from the offline faces (one person per split)"
# Visible forgeries (recolour, noise, sharpening: plain at the cpu model's 128 px) and
# about as many real faces as fakes, so that "fake" is not the answer a prior gives.
$fifa data synth --out "$out/synth" --n 150 --n-real 100 --size 256 --max-ops 1 --crop tight \
  --strength visible --quiet

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

step "7. Train the cpu FiFa-MLLM from scratch on those shards: the image side alone first, then all 11 tasks mixed by Table 17 (rerun to resume)"
$fifa train --config configs/demo_cpu.yaml --workdir "$out/train" --set data.root="$out/data" \
  ${STEPS:+--set train.steps=$STEPS}
$py -m fifa_jax.train.plot "$out/train/metrics.jsonl" -o "$out/train/learning_curve.png" \
  --title "make demo: the cpu model on the synthetic faces"

step "8. Evaluate on the synthetic test split (a person never seen in training): the Table 3 report"
$fifa eval --checkpoint "$out/train" --data "$out/data" --split test --out "$out/eval" \
  --max-per-task 16 --batch-size 8 > "$out/eval.log"
cat "$out/eval/report.md"
$py scripts/demo_targets.py "$out/eval/report.json"

step "9. Ask the model about the astronaut's photo: her face is found and cropped as the training faces are, all 11 tasks"
$fifa prep faces "$out/astronaut.png"
$fifa infer --checkpoint "$out/train" --image "$out/astronaut.png" --faces largest --task all \
  --region "right eye" --box "177,87,226,131" --out "$out/infer" --max-new-tokens 480
# The face crop itself, for the README's Python, chat and HTTP examples.
$py - "$out" <<'EOF'
import sys, cv2
from fifa_jax.infer import faces
out = sys.argv[1]
rgb = cv2.cvtColor(cv2.imread(f"{out}/astronaut.png"), cv2.COLOR_BGR2RGB)
with faces.FaceFinder() as finder:
  face = faces.choose(finder.find(rgb), "largest")[0]
crop = cv2.resize(faces.crop_face(rgb, face), (256, 256), interpolation=cv2.INTER_AREA)
cv2.imwrite(f"{out}/astronaut_face.png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
EOF

step "10. Deepfake-Agent: the demo model as face expert beside a scripted semantic expert; vote and confidence"
$py scripts/demo_agent.py "$out"
$fifa agent reports --manifest "$out/agent/dev.jsonl" --config "$out/agent/agent.yaml" --out "$out/agent/dev_reports.jsonl" --no-progress
$fifa agent eval --manifest "$out/agent/dev.jsonl" --reports "$out/agent/dev_reports.jsonl" --out "$out/agent/dev" > /dev/null
$fifa agent reports --manifest "$out/agent/test.jsonl" --config "$out/agent/agent.yaml" --out "$out/agent/reports.jsonl" --no-progress
$fifa agent eval --manifest "$out/agent/test.jsonl" --reports "$out/agent/reports.jsonl" --out "$out/agent" \
  --accuracy-from "$out/agent/dev/report.json"
$fifa agent run --image "$out/synth/$(sed -n 's/.*"image": "\([^"]*\)".*/\1/p' "$out/agent/test.jsonl" | head -1)" \
  --config "$out/agent/agent.yaml" --out "$out/agent/run"

echo
echo "demo outputs: $out/ (learning curve: $out/train/learning_curve.png; eval overlays: $out/eval/overlays/)"
