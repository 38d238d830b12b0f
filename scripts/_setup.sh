# Shared by scripts/test, scripts/demo and scripts/bench: create .venv if missing and install
# the project with its dev extra (again whenever pyproject.toml is newer than the last install).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.pydbms-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$ROOT/.venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$ROOT/.venv/bin/python" -m pip install --quiet -e "$ROOT[dev]" >&2
    touch "$STAMP"
fi
VENV_PY="$ROOT/.venv/bin/python"
