#!/bin/sh
# tools/retrofit/setup.sh — create the retrofit's virtual environment in the
# cache (~/.cache/lethe/retrofit-venv, or $LETHE_RETROFIT_VENV) and install
# requirements.txt into it. torch from PyPI is several GB (CUDA libraries come
# with it): this is why CI does not run it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${LETHE_RETROFIT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/retrofit-venv}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv"
fi
"$venv/bin/pip" install --upgrade pip >/dev/null
"$venv/bin/pip" install -r "$here/requirements.txt"
echo "retrofit venv ready: $venv"
echo "use: $venv/bin/python $here/retrofit.py --help"
