#!/usr/bin/env bash
# Create (or reuse) the course's virtual environment.
#
# The environment is rebuilt only when requirements.lock, the d2l pin or this
# script change: their combined SHA-256 is stored in $VENV/.env-hash and
# compared on every run, so a second `make book` / `make test` installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${VENV:-.venv}")
PYTHON=${PYTHON:-python3}
D2L_PIN=${D2L_PIN:-d2l==1.0.3}

want=$( (cat requirements.lock tools/ensure-env.sh; echo "$D2L_PIN") | sha256sum | cut -d' ' -f1)
if [[ -x "$VENV/bin/python" && -f "$VENV/.env-hash" && "$(cat "$VENV/.env-hash")" == "$want" ]]; then
  exit 0
fi

echo "Setting up $VENV (requirements.lock changed or no environment yet) ..."
start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# pip's notices about unreachable extra index locations are noise; keep its errors.
pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q "$@" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
pip install --upgrade pip
# Every pin is in the lock, so no resolver run is needed.
pip install --no-deps -r requirements.lock
# d2l 1.0.3 pins numpy==1.23.5 and other stale versions; its real imports are in the lock.
pip install --no-deps "$D2L_PIN"
# The course package itself, editable, so chapters always import the checkout.
pip install --no-deps -e .
(cd / && "$VENV/bin/python" -c "import torch, d2l.torch, seqcourse, nbgrader, jieba, myst_nb") \
  || { echo "environment check failed: see the pip output above" >&2; exit 1; }
echo "$want" > "$VENV/.env-hash"
echo "Environment ready in $(( $(date +%s) - start )) s."
