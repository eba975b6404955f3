#!/usr/bin/env bash
# What a user's install does, checked from the outside (CI runs this after the tests):
#   1. build the sdist and the wheel (python -m build), and check that both carry every data file;
#   2. install the wheel with packaging/install.sh into a fresh pipx home, on a PATH without pipx (so the
#      script bootstraps pipx from PyPI, as on a machine with only Python);
#   3. run the installed `localr1 --version`, `localr1 doctor --json` and one `ask` with a test model.
#
#   bash packaging/check_install.sh [PYTHON]     # PYTHON: one with `build` installed (the dev venv's)
#
# pip's wheel cache is shared with the dev install, so llama-cpp-python is not compiled a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== build: sdist and wheel"
"$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
wheel="$(ls "$work"/dist/localr1-*-py3-none-any.whl)"
sdist="$(ls "$work"/dist/localr1-*.tar.gz)"
echo "   $(basename "$wheel"), $(basename "$sdist")"
"$python" - "$wheel" "$sdist" <<'EOF'
import subprocess, sys, tarfile, zipfile

wheel, sdist = sys.argv[1:]
tracked = subprocess.run(["git", "ls-files", "localr1"], capture_output=True, text=True, check=True).stdout.split()
in_wheel = set(zipfile.ZipFile(wheel).namelist())
missing = [p for p in tracked if p not in in_wheel]
assert not missing, f"the wheel lacks {missing}"
with tarfile.open(sdist) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
for needed in ["README.md", "pyproject.toml", *tracked]:  # models.toml: as localr1/models.toml, a copy
    assert needed in names, f"the sdist lacks {needed}"
meta = zipfile.ZipFile(wheel).read(next(n for n in in_wheel if n.endswith(".dist-info/METADATA"))).decode()
assert "Requires-Python: >=3.11" in meta, "Requires-Python is not >=3.11"
print(f"   the wheel has all {len(tracked)} files of localr1/ (models.toml included), the sdist too")
EOF

echo "== install: packaging/install.sh with the wheel, pipx bootstrapped from PyPI"
home="$work/home"
mkdir -p "$home"
bare_path="$(dirname "$(command -v python3)"):/usr/bin:/bin"
# the user's environment (pip's configuration and proxies included), but a PATH without a venv or pipx
# and a fresh pipx home
env -u VIRTUAL_ENV -u PYTHONPATH PATH="$bare_path" PIPX_HOME="$home/pipx" PIPX_BIN_DIR="$home/bin" \
  XDG_DATA_HOME="$home/data" LOCALR1_FROM="$wheel" sh packaging/install.sh --version | tee "$work/install.log"
grep -q "^localr1 " "$work/install.log"
localr1="$home/bin/localr1"
[ -x "$localr1" ] || { echo "no localr1 in $home/bin"; exit 1; }
run() {
  env -u VIRTUAL_ENV -u PYTHONPATH PATH="$home/bin:$bare_path" XDG_CACHE_HOME="$home/cache" \
    XDG_DATA_HOME="$home/data" XDG_CONFIG_HOME="$home/config" HF_HUB_OFFLINE=1 "$localr1" "$@"
}

echo "== the installed localr1"
run --version
run doctor --json >"$work/doctor.json" || true  # exit 1 means a problem: the JSON says which
"$python" - "$work/doctor.json" <<'EOF'
import json, sys

report = json.load(open(sys.argv[1]))
assert report["llama_cpp"]["llama_cpp_python"], report["llama_cpp"]
assert "CPU" in [d["name"] for d in report["llama_cpp"]["devices"]], report["llama_cpp"]
assert report["ok"], report["problems"]
print(f"   doctor: ok, llama.cpp {report['llama_cpp']['llama_cpp_python']}, backends {report['llama_cpp']['backends']}")
EOF
model="${LOCALR1_CHECK_MODEL:-$HOME/.cache/localr1-test-models/tiny-r1-qwen2-v3.gguf}"
if [ -f "$model" ]; then
  run ask "What is 2+2?" --model "$model" --max-tokens 16 --seed 1 --json >"$work/ask.json"
  "$python" -c "import json,sys; r=json.load(open(sys.argv[1])); assert 0 < r['usage']['completion_tokens'] <= 16, r; print('   ask:', r['finish_reason'], r['usage'])" "$work/ask.json"
else
  echo "   no test model at $model (the test run builds it): ask not checked" >&2
  exit 1
fi
echo "== install check passed"
