#!/usr/bin/env bash
# `make demo`: the pipeline end to end on embedded data (real faces that ship
# with scikit-image and insightface; no download of weights or datasets).
# Each later issue extends it until it reads:
#   synth faces -> annotate -> build shards -> train a tiny model -> eval -> infer.
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

step "3. FiFa-MLLM at paper size, initialised abstractly (no memory allocated)"
$fifa params --config paper

step "Not yet in the demo"
echo "synthetic forgeries, FiFa-11 shards (issue 4); training (issue 7); eval and inference (issue 8)"
echo
echo "demo outputs: $out/"
ls -1 "$out"
