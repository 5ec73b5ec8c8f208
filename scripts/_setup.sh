# Shared set-up for scripts/demo and scripts/test (sourced, not run).
# Installs what is missing and nothing more, so a second run is fast:
#   - redis-server, openssl and git (Debian packages) when they are not on PATH;
#   - a virtualenv .venv with tinytownd installed (editable) plus the extras named in $TT_EXTRAS.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v git >/dev/null 2>&1 || need_apt+=(git)       # worktree mode (workspaces)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tinytownd needs: ${need_apt[*]}. Install with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${need_apt[*]}" >&2
    exit 69
  fi
  echo "==> installing ${need_apt[*]} (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need_apt[@]}" >&2
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "tinytownd needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
  exit 69
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv" >&2
  if ! "$PY" -m venv .venv 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get install -y -qq python3-venv >&2 && "$PY" -m venv .venv
    else
      echo "python venv module missing: sudo apt-get install -y python3-venv" >&2; exit 69
    fi
  fi
fi
VENV_PY="$ROOT/.venv/bin/python"
extras=${TT_EXTRAS:-}
stamp=".venv/.tinytownd-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  echo "==> installing tinytownd${extras:+[$extras]} into .venv" >&2
  "$VENV_PY" -m pip install -q --upgrade pip >&2 || true
  "$VENV_PY" -m pip install -q -e ".${extras:+[$extras]}" >&2
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
