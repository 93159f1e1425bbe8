#!/usr/bin/env bash
# Idempotent machine + project setup (what `make setup` runs):
#   1. Debian/Ubuntu packages (OpenBLAS, a C++ compiler, Python venv support),
#   2. the project venv .venv/ with the pinned wheels from constraints.txt.
# Re-running is cheap: each step checks whether it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(libopenblas-dev g++ python3-venv pkg-config)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "$(uname -s)" = Linux ] && [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.constraints.sha256
want=$(sha256sum constraints.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned wheels into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r constraints.txt -c constraints.txt
  echo "$want" > "$stamp"
fi
echo "setup: ok (MLX at $(ls -d .venv/lib/python3*/site-packages/mlx))"
