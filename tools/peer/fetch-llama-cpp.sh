#!/usr/bin/env bash
# tools/peer/fetch-llama-cpp.sh — make sure llama.cpp's source is at $LETHE_CACHE/llama.cpp, print its path.
#
# llama.cpp is our peer (reference outputs, tokenizer test vectors in
# models/ggml-vocab-*.gguf + .inp/.out, benchmarks). Its source comes from the
# llama-cpp-python sdist on PyPI, which vendors it under vendor/llama.cpp. We
# pin the sdist version and its sha256, download it with curl (asking PyPI's
# JSON simple index for the URL; much faster than `pip download --no-binary`,
# which builds the package's build dependencies) into $LETHE_CACHE/dl, and
# extract vendor/llama.cpp.
#
# Reuses what is there: a complete tree at $LETHE_CACHE/llama.cpp (a directory
# or a symlink, e.g. to llama.cpp-src), or a complete $LETHE_CACHE/llama.cpp-src
# (then llama.cpp becomes a symlink to it), or the sdist already in dl/.
#
# stdout: the source tree's path only.
set -euo pipefail

CACHE="${LETHE_CACHE:-$HOME/.cache/lethe}"
VERSION="0.3.36"
SDIST="llama_cpp_python-${VERSION}.tar.gz"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
DEST="$CACHE/llama.cpp"
ALT="$CACHE/llama.cpp-src"
STAMP_NAME=".lethe-llama-cpp-python-version"

log() { echo "fetch-llama-cpp.sh: $*" >&2; }

# A tree is usable when it has the API header, the CMake project and the
# tokenizer vectors; when it carries our stamp, the stamp must name $VERSION.
tree_ok() {
    local d="$1"
    [[ -f "$d/include/llama.h" && -f "$d/CMakeLists.txt" && -f "$d/models/ggml-vocab-gpt-2.gguf" ]] || return 1
    if [[ -f "$d/$STAMP_NAME" ]]; then
        [[ "$(cat "$d/$STAMP_NAME")" == "$VERSION" ]] || return 1
    fi
    return 0
}

if tree_ok "$DEST"; then
    echo "$DEST"
    exit 0
fi

mkdir -p "$CACHE/dl"

if tree_ok "$ALT"; then
    # Another checkout already unpacked it beside us: point llama.cpp at it.
    if [[ -L "$DEST" || ! -e "$DEST" ]]; then
        ln -sfn "llama.cpp-src" "$DEST"
        log "linked $DEST -> llama.cpp-src"
        echo "$DEST"
        exit 0
    fi
fi

sdist_ok() { [[ -f "$CACHE/dl/$SDIST" && "$(sha256sum "$CACHE/dl/$SDIST" | cut -d' ' -f1)" == "$SDIST_SHA256" ]]; }

if ! sdist_ok; then
    rm -f "$CACHE/dl/$SDIST"
    log "looking up $SDIST on PyPI"
    # PEP 691 JSON simple index; fall back to the older /pypi/<name>/<version>/json API.
    url="$(curl -fsSL --retry 3 -H 'Accept: application/vnd.pypi.simple.v1+json' \
            https://pypi.org/simple/llama-cpp-python/ 2>/dev/null |
        python3 -c 'import json, sys
for f in json.load(sys.stdin)["files"]:
    if f["filename"] == sys.argv[1]: print(f["url"]); break' "$SDIST" || true)"
    if [[ -z "$url" ]]; then
        url="$(curl -fsSL --retry 3 "https://pypi.org/pypi/llama-cpp-python/$VERSION/json" |
            python3 -c 'import json, sys
for f in json.load(sys.stdin)["urls"]:
    if f["packagetype"] == "sdist": print(f["url"]); break' || true)"
    fi
    [[ -n "$url" ]] || { log "ERROR: cannot find $SDIST on PyPI"; exit 1; }
    log "downloading $url (about 77 MB)"
    curl -fSL --retry 3 -o "$CACHE/dl/$SDIST.part" "$url"
    mv -f "$CACHE/dl/$SDIST.part" "$CACHE/dl/$SDIST"
    if ! sdist_ok; then
        rm -f "$CACHE/dl/$SDIST"
        log "ERROR: $SDIST does not have sha256 $SDIST_SHA256; deleted it"
        exit 1
    fi
fi

log "extracting vendor/llama.cpp from $SDIST"
tmp="$CACHE/.llama.cpp.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
mkdir -p "$tmp"
tar -xzf "$CACHE/dl/$SDIST" -C "$tmp" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
echo "$VERSION" >"$tmp/$STAMP_NAME"
tree_ok "$tmp" || { log "ERROR: the extracted tree lacks include/llama.h or models/"; exit 1; }

# Replace whatever stale thing is at $DEST. When it is a symlink, refresh its
# target rather than breaking the link other checkouts may rely on.
target="$DEST"
if [[ -L "$DEST" ]]; then
    target="$(readlink -f "$DEST")"
fi
case "$target" in
    /|"$HOME"|"$CACHE"|"") log "ERROR: refusing to replace '$target'"; exit 1 ;;
esac
rm -rf "$target"
mkdir -p "$(dirname "$target")"
mv "$tmp" "$target"
log "llama.cpp source ready"
echo "$DEST"
