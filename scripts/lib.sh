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
  # Packages such as postfix, nginx, redis-server and postgresql are wanted as programs the tests and benchmarks start
  # themselves, not as system services on ports 25 and 80: policy-rc.d answers 101 ("not
  # allowed") while they install, so Debian does not start them (and they stay stopped).
  local policy=/usr/sbin/policy-rc.d placed=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" && placed=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    { [ -z "$placed" ] || $sudo rm -f "$policy"; return 1; }
  [ -z "$placed" ] || $sudo rm -f "$policy"
  # Nor at boot, under systemd.
  for service in "${missing[@]}"; do
    case "$service" in postfix|nginx|redis-server|postgresql|haproxy) ;; *) continue ;; esac
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  done
}

# .venv with the project installed (editable), plus the given extras ("" for none, or "test").
# Says what it does in one line; pip's own output goes to .venv/install.log, shown only if it fails.
ensure_venv() {
  local extras="$1" stamp=".venv/.installed-${1:-base}"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv 2>/dev/null || { ensure_debs python3-venv; python3 -m venv .venv; }
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing Mailward${extras:+ with its $extras extras} into .venv (first run: about a minute)..." >&2
    if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip &&
           .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"; } \
         >.venv/install.log 2>&1; then
      cat .venv/install.log >&2
      echo "installing into .venv failed (the log is above and in .venv/install.log)" >&2
      return 1
    fi
    touch "$stamp"
    echo "installed." >&2
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
