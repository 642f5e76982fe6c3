#!/usr/bin/env bash
# Wheel check: builds the gwt-optim wheel from this checkout's files, installs it with its core
# dependencies only (torch, numpy, PyWavelets, ptwt) into a fresh virtual environment, and runs
# scripts/wheel_smoke.py there twice: with the system C compiler (the CPU kernel builds from the
# installed sources) and with no compiler on PATH (a warning, then the torch path).
#
#   scripts/check_wheel.sh          # or: make wheel-check
#
# Environment: PYTHON (interpreter for the venv, default python3), TORCH (torch requirement,
# default torch==2.13.0 as in the Makefile), KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
work=$(mktemp -d "${TMPDIR:-/tmp}/gwt-wheel-check.XXXXXX")
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
start=$SECONDS

echo "== wheel check in $work"
# Build from a copy of the files git knows (tracked and new, not ignored), so that nothing stale
# in the checkout (build/, *.egg-info) can slip into the wheel; outside git, from what the wheel needs.
mkdir "$work/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$work/src"
else
    tar --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md gwt gwt_lab | tar -xf - -C "$work/src"
fi

"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
pip() {  # quiet pip; drops the notes about configured local index folders that lack a package
  { "$py" -m pip -q "$@" 2>&1; } | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
pip_install() {  # --no-compile: byte-compiling torch's files would double the install time
  pip install --no-compile "$@"
}
pip_install "$TORCH"    # first, so that the wheel's torch requirement is already met
pip wheel --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/gwt_optim-*.whl)
echo "== built in $((SECONDS - start)) s: $(basename "$wheel")"
pip_install "$wheel"     # core dependencies only: no extras
"$py" -m pip list --format=freeze | grep -iE '^(torch|numpy|pywavelets|ptwt|gwt-optim)==' | tr '\n' ' '
echo "(installed in $((SECONDS - start)) s)"

cp scripts/wheel_smoke.py "$work/wheel_smoke.py"
cd "$work"    # away from the checkout: `import gwt` must find the installed wheel

echo "== with a C compiler"
mkdir cache-kernel
GWT_CACHE_DIR="$work/cache-kernel" OMP_NUM_THREADS=1 "$py" wheel_smoke.py kernel

echo "== without a C compiler (PATH holds only the venv, CC unset)"
mkdir cache-nokernel
env -u CC PATH="$work/venv/bin" GWT_CACHE_DIR="$work/cache-nokernel" OMP_NUM_THREADS=1 \
    "$py" wheel_smoke.py nokernel

echo "== wheel check passed in $((SECONDS - start)) s"
