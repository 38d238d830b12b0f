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
    echo "setting up $ROOT/.venv (the project and its dev extra; log in .venv/install.log)..." >&2
    if ! { "$ROOT/.venv/bin/python" -m pip install --upgrade pip \
           && "$ROOT/.venv/bin/python" -m pip install -e "$ROOT[dev]"; } > "$ROOT/.venv/install.log" 2>&1; then
        tail -n 30 "$ROOT/.venv/install.log" >&2
        echo "installing failed; the whole log is $ROOT/.venv/install.log" >&2
        exit 1
    fi
    touch "$STAMP"
fi
VENV_PY="$ROOT/.venv/bin/python"
