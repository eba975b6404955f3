#!/bin/sh
# Install localr1 with pipx, on a machine that may have nothing but Python 3.11+, then run
# `localr1 ARGS...` if arguments are given:
#
#   sh packaging/install.sh                                  # install (or upgrade) from this checkout
#   sh packaging/install.sh ask "what is 17 * 23?"           # install, then ask
#   LOCALR1_FROM=dist/localr1-0.9.0-py3-none-any.whl sh packaging/install.sh   # install a wheel
#
# pipx is used where it is installed; where it is not, it is installed into its own small virtual
# environment first (nothing is added to the system Python, which Debian and Ubuntu forbid anyway).
# PIPX_HOME and PIPX_BIN_DIR are honoured. llama-cpp-python compiles llama.cpp during the install (a few
# minutes; a C++ compiler is needed: `sudo apt-get install build-essential`, or `xcode-select --install`).
set -eu
here="$(cd "$(dirname "$0")/.." && pwd)"
from="${LOCALR1_FROM:-$here}"
python="${PYTHON:-python3}"

command -v "$python" >/dev/null 2>&1 || { echo "Error: $python not found; install Python 3.11 or newer" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "Error: localr1 needs Python 3.11 or newer; $python is $("$python" -V 2>&1)" >&2
  echo "Hint: install a newer Python, then: PYTHON=python3.12 sh $0" >&2
  exit 1
}

if command -v pipx >/dev/null 2>&1; then
  pipx="pipx"
elif "$python" -m pipx --version >/dev/null 2>&1; then
  pipx="$python -m pipx"
else
  data="${XDG_DATA_HOME:-$HOME/.local/share}"
  boot="$data/localr1/pipx-venv"
  if [ ! -x "$boot/bin/pipx" ]; then
    echo "pipx is not installed: installing it into $boot"
    "$python" -m venv "$boot" 2>/dev/null || {
      rm -rf "$boot"
      echo "Error: $python cannot create a virtual environment" >&2
      echo "Hint: sudo apt-get install python3-venv   (or install pipx: https://pipx.pypa.io)" >&2
      exit 1
    }
    "$boot/bin/python" -m pip install --quiet --disable-pip-version-check pipx
  fi
  pipx="$boot/bin/pipx"
fi

echo "Installing localr1 from $from (llama.cpp is compiled during the install: a few minutes)"
# --force: reinstall over an earlier install of localr1 (an upgrade from a checkout keeps the version)
$pipx install --force --python "$python" "$from"

bin="${PIPX_BIN_DIR:-$HOME/.local/bin}"
case ":$PATH:" in
  *":$bin:"*) ;;
  *)
    $pipx ensurepath >/dev/null 2>&1 || true
    echo "localr1 is in $bin, which a new terminal will have on PATH (pipx ensurepath)."
    PATH="$bin:$PATH"
    export PATH
    ;;
esac
if [ "$#" -gt 0 ]; then
  exec localr1 "$@"
fi
echo "Done. Try: localr1 ask \"prove that sqrt(2) is irrational\" --show-thinking"
