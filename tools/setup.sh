#!/usr/bin/env bash
# tools/setup.sh — install what lethe needs to build, then configure and build it.
#
#   tools/setup.sh              install missing packages, configure (once) and build into build/
#   tools/setup.sh --deps-only  only install missing packages
#   tools/setup.sh --plots      also install gnuplot (tools/bench_report.py plot); not in CI's default
#
# Idempotent and quick when everything is already there: the package check is
# one dpkg-query call, apt-get runs only when something is missing, CMake
# configures only when build/ has no build.ninja, and ninja is a no-op when up
# to date. Environment: LETHE_BUILD_DIR (default build), LETHE_BUILD_TYPE
# (default Release), LETHE_CMAKE_ARGS (extra configure arguments),
# LETHE_JOBS (ninja -j; default: ninja's own choice).
#
# Works when called (bash tools/setup.sh) or sourced (. tools/setup.sh).

lethe_setup_main() {
    set -euo pipefail
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    local deps_only=0 plots=0
    local arg
    for arg in "$@"; do
        case "$arg" in
            --deps-only) deps_only=1 ;;
            --plots) plots=1 ;;
            -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; return 0 ;;
            *) echo "setup.sh: unknown argument '$arg'" >&2; return 2 ;;
        esac
    done

    # ---- packages (Debian 12 names)
    local pkgs=(build-essential cmake ninja-build pkg-config libvulkan-dev mesa-vulkan-drivers
                glslc spirv-tools vulkan-tools vulkan-validationlayers libopenblas-dev libcmocka-dev libpcre2-dev
                libjansson-dev libutf8proc-dev python3 python3-pip unzip curl ca-certificates)
    ((plots)) && pkgs+=(gnuplot-nox)
    local missing=() p status
    for p in "${pkgs[@]}"; do
        # "install ok installed" is the only state in which a package is usable
        status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "setup.sh: installing ${missing[*]}" >&2
        local sudo=()
        if [[ "$(id -u)" != 0 ]]; then
            command -v sudo >/dev/null || { echo "setup.sh: not root and no sudo: install ${missing[*]} by hand" >&2; return 1; }
            sudo=(sudo)
        fi
        # A fresh image has empty package lists: update once, then install.
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    ((deps_only)) && return 0

    # ---- configure once, build always (ninja is a quick no-op when up to date)
    local bdir="${LETHE_BUILD_DIR:-build}"
    [[ "$bdir" = /* ]] || bdir="$root/$bdir"
    if [[ ! -f "$bdir/build.ninja" ]]; then
        # shellcheck disable=SC2086  # LETHE_CMAKE_ARGS is a list of words on purpose
        cmake -S "$root" -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE="${LETHE_BUILD_TYPE:-Release}" ${LETHE_CMAKE_ARGS:-} >&2
    fi
    local jobs=()
    [[ -n "${LETHE_JOBS:-}" ]] && jobs=(-j "$LETHE_JOBS")
    ninja -C "$bdir" "${jobs[@]}" >&2
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    lethe_setup_main "$@"
else
    # Sourced: run in a subshell so `set -e` and a failure do not leak into
    # (or kill) the caller's shell; report the status instead. A sourced file
    # sees the caller's arguments when given none of its own, so only an
    # explicit --deps-only is taken from them.
    if [[ "${1:-}" == --deps-only ]]; then
        ( lethe_setup_main --deps-only )
    else
        ( lethe_setup_main )
    fi
fi
