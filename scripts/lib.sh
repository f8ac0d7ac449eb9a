# Shared by scripts/run, scripts/test and scripts/bench. Sourced, not run.

# Debian packages a fresh machine lacks: install the missing ones (needs root or sudo).
ensure_debs() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# .venv with the project installed (editable), plus the given extras ("" for none, or "test").
ensure_venv() {
  local extras="$1" stamp=".venv/.installed-${1:-base}"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv 2>/dev/null || { ensure_debs python3-venv; python3 -m venv .venv; }
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}" >&2
    touch "$stamp"
  fi
}

# Node.js and the npm packages of tests/verifiers (mailauth, an independent DKIM verifier).
ensure_node_verifiers() {
  command -v npm >/dev/null 2>&1 || ensure_debs nodejs npm
  local dir=tests/verifiers
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --silent >&2)
    touch "$dir/node_modules"
  fi
}
