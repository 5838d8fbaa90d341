#!/usr/bin/env bash
# tools/gpu-deps.sh — here, on a Debian 12 machine with network: download the
# few libraries lethe builds against (OpenBLAS, PCRE2, jansson, utf8proc,
# cmocka, pkg-config) as .deb files into .gpu-deps/ (git-ignored), for a GPU
# machine that has the CUDA toolkit but neither these -dev packages nor a
# network. Carry .gpu-deps with the call (device tool: carry [".gpu-deps"]);
# tools/gpu-check.sh unpacks them under $LETHE_GPU_WORK/deps (never into /)
# and points pkg-config, the compiler and the loader there. Uses the ordinary
# apt client (apt-get download: no root, no install). About 15 MB.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.gpu-deps"
PKGS=(libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libpcre2-dev libpcre2-8-0 libjansson-dev
      libjansson4 libutf8proc-dev libutf8proc2 libcmocka-dev libcmocka0 pkgconf pkgconf-bin libpkgconf3)
mkdir -p "$DEST"
cd "$DEST"
rm -f ./*.deb
apt-get download "${PKGS[@]}"
echo "gpu-deps: $(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in $DEST"
