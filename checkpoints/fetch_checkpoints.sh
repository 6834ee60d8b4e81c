#!/usr/bin/env bash
# Download OpenAI's released consistency-model checkpoints (about 21 GB for all 12).
#   bash checkpoints/fetch_checkpoints.sh                       # all 12 original .pt files
#   bash checkpoints/fetch_checkpoints.sh cd_imagenet64_lpips   # one or more by name
#   bash checkpoints/fetch_checkpoints.sh --hub cd_imagenet64_l2  # the openai/diffusers-* Hub repo
# Files go to $CM_CHECKPOINT_DIR (default: this folder). Downloads resume after an interruption
# (<name>.pt.part), are checked against the server's length and any recorded size/sha256, and are
# renamed into place only when complete. Sizes and sha256 are printed at the end. Offline machines
# get a clear error; copy the files in by hand instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${CM_PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
cd "$root"
if [ $# -eq 0 ]; then set -- all; fi
exec "$py" -m cm_core fetch "$@"
