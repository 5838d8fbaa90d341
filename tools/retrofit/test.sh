#!/bin/sh
# tools/retrofit/test.sh — the trainer's pytest suite (not part of ctest/CI:
# torch is too heavy for CI). Needs the lethe CLI built (build/bin/lethe, or
# $LETHE_BIN) for the export round trip. Uses $LETHE_RETROFIT_VENV or the venv
# tools/retrofit/setup.sh made.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${LETHE_RETROFIT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/retrofit-venv}
if [ ! -x "$venv/bin/python" ]; then
    echo "no retrofit venv at $venv: run tools/retrofit/setup.sh (or set LETHE_RETROFIT_VENV)" >&2
    exit 2
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "$venv/bin/python" -m pytest -q "$here/tests" "$@"
