#!/usr/bin/env bash
# tools/test-sanitize.sh — the whole test suite again, built with
# AddressSanitizer + UndefinedBehaviorSanitizer (any report fails the run).
# Run after tools/test.sh (which installs packages and fetches the model).
#
#   tools/test-sanitize.sh [CTEST_ARGS...]   (LETHE_JOBS=N: ninja -j N, as tools/setup.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${LETHE_ASAN_BUILD_DIR:-build-asan}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    cmake -S . -B "$BUILD_DIR" -G Ninja -DLETHE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
ninja -C "$BUILD_DIR" ${LETHE_JOBS:+-j "$LETHE_JOBS"}
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# Lavapipe's one leak is suppressed by name (tests/lsan.supp); tests pin the
# driver loaded (tu_pin_vulkan_driver) so LeakSanitizer can name it.
ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error --timeout 900 -j1 "$@"
