#!/usr/bin/env bash
# Where should the TM blocks sit in a 224 px ImageNet-geometry ResNet? (issue 10, item 7)
#
# The converged cluttered-MNIST protocol of README "Results" at full width (tm_resnet18, 64-512 channels, the
# standard stride-4 stem) with inputs resized to 224 px, so that the stage-3 and stage-4 maps are 14 x 14 and
# 7 x 7 as in ImageNet models (where tm_resnet50 puts its block). Variants: the baseline, the default placement
# (stages 3 and 4), stage 4 alone (tm_resnet50's default) and stage 3 alone, each beside its evidence-only control.
# 5 seeds x 7 variants, one GPU, bf16 autocast. Not yet run: this machine has no GPU. Expected well under 10 minutes
# on one H100/H200 (about 1,500 steps of batch 32 per run); check with --seeds 0 first.
#
#   bash benchmarks/gpu_placement.sh [OUT]        (OUT: a new folder, default results/gpu-placement)
set -euo pipefail
OUT="${1:-results/gpu-placement}"
exec timm-tm compare --dataset cluttered-mnist --model tm_resnet18 --channels '' --canvas 40 --img-size 224 \
  --train-size 4000 --val-size 2000 --epochs 12 --seeds 0 1 2 3 4 --device cuda --amp --jobs 1 \
  --variants baseline tm tm-noembed tm-s4 tm-noembed-s4 tm-s3 tm-noembed-s3 --out "$OUT"
