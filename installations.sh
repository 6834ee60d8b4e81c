#!/usr/bin/env bash
# Set up cm-studio on a fresh machine: a virtual environment in .venv with the requirements.
#   bash installations.sh          # runtime (app, CLI); what the Dockerfile and Spaces use
#   bash installations.sh --dev    # plus test tools and headless Chromium for the browser test
# Works on Debian/Ubuntu, Paperspace Gradient and plain CPU machines. PyTorch: the pinned
# version; on a machine with a local CPU wheel (pip find-links) that is used, otherwise pip picks
# the default build for the platform (CUDA on Linux x86_64).
set -euo pipefail
cd "$(dirname "$0")"
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg (use --dev or nothing)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
VENV=${CM_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$DEV" = 1 ]; then
  "$VENV/bin/python" -m pip install -q -r requirements-dev.txt
  if ! command -v chromium >/dev/null 2>&1 && [ -x "$(command -v apt-get)" ] && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  fi
else
  "$VENV/bin/python" -m pip install -q -r requirements.txt
fi
echo "cm-studio installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
