#!/usr/bin/env bash
# test_install.sh — lethe as an application developer gets it: `cmake
# --install` into a fresh temporary prefix, then, from a copy of examples/
# outside the source tree (and with nothing but that prefix), build the C
# example through pkg-config and the C++ one through find_package(lethe),
# and run them on the default model.
#
#   test_install.sh BUILD_DIR EXAMPLES_DIR MODEL
#
# Checks: the installed layout and soname; liblethe.so exports exactly the
# LETHE_API functions of the installed lethe.h; the header compiles as
# strict C99 and C++11; lethe_backend_dir() of the installed library is
# <prefix>/lib/lethe; the C example's greedy stream equals the installed
# CLI's `lethe generate` output token for token; the C++ example answers;
# a static link through `pkg-config --static` also runs.
set -euo pipefail
BUILD="$(cd "$1" && pwd)"; EXAMPLES="$(cd "$2" && pwd)"; MODEL="$3"
N_TOKENS=12
# set by ctest for sanitizer builds: the same -fsanitize flags as the library
XF="${LETHE_EXAMPLE_FLAGS:-}"
PROMPT="The capital of France is"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lethe-install-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PREFIX="$WORK/prefix"
fail() { echo "test_install: FAIL: $*" >&2; exit 1; }
step() { echo "test_install: $*" >&2; }

step "install into $PREFIX"
cmake --install "$BUILD" --prefix "$PREFIX" >/dev/null
LIBDIR="$(dirname "$(find "$PREFIX" -name liblethe.so -print -quit)")"
[ -n "$LIBDIR" ] && [ "$LIBDIR" != . ] || fail "no liblethe.so installed"
for f in "$PREFIX/include/lethe.h" "$PREFIX/bin/lethe" "$LIBDIR/liblethe.a" "$LIBDIR/pkgconfig/lethe.pc" \
         "$LIBDIR/cmake/lethe/lethe-config.cmake" "$LIBDIR/cmake/lethe/lethe-config-version.cmake"; do
    [ -e "$f" ] || fail "missing $f"
done
[ -d "$LIBDIR/lethe" ] || fail "missing the backend module folder $LIBDIR/lethe"
REPORT="$(find "$PREFIX" -path '*/share/lethe/bench_report.py' -print -quit)"
[ -n "$REPORT" ] && [ -x "$REPORT" ] || fail "no executable share/lethe/bench_report.py installed"
soname="$(objdump -p "$LIBDIR/liblethe.so" | awk '/SONAME/ {print $2}')"
[[ "$soname" =~ ^liblethe\.so\.[0-9]+$ ]] || fail "soname is '$soname'"
[ -e "$LIBDIR/$soname" ] || fail "no $soname symlink"

step "exported symbols = LETHE_API functions of lethe.h"
grep -v '#' "$PREFIX/include/lethe.h" | grep -o 'LETHE_API[^(]*(' | sed -E 's/.*[ *]([A-Za-z_0-9]+)\($/\1/' | sort -u > "$WORK/api.txt"
nm -D --defined-only "$LIBDIR/liblethe.so" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sort -u > "$WORK/exported.txt"
[ "$(wc -l < "$WORK/api.txt")" -gt 30 ] || fail "could not read the API from lethe.h"
if ! diff "$WORK/api.txt" "$WORK/exported.txt" >&2; then fail "exports differ from lethe.h ('<' header only, '>' exported only)"; fi

step "lethe.h as strict C99 and C++11"
printf '#include <lethe.h>\nint main(void) { return lethe_version() == 0; }\n' > "$WORK/h.c"
cp "$WORK/h.c" "$WORK/h.cpp"
cc $XF -std=c99 -pedantic -Wall -Wextra -Werror -I"$PREFIX/include" -c "$WORK/h.c" -o "$WORK/h.o"
c++ $XF -std=c++11 -pedantic -Wall -Wextra -Werror -I"$PREFIX/include" -c "$WORK/h.cpp" -o "$WORK/hpp.o"
nm "$WORK/hpp.o" | grep -q ' U lethe_version$' || fail "C++ sees lethe_version with C++ linkage (extern \"C\" missing)"

# Nothing from here on may see the source tree: a copy of the examples and the prefix.
cp -r "$EXAMPLES" "$WORK/examples"
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig"
unset CPATH C_INCLUDE_PATH CPLUS_INCLUDE_PATH LIBRARY_PATH LD_LIBRARY_PATH

step "backend folder of the installed library"
cat > "$WORK/dir.c" <<'C'
#include <lethe.h>
#include <stdio.h>
int main(void) { puts(lethe_backend_dir()); return 0; }
C
# shellcheck disable=SC2046
cc $XF -o "$WORK/dir" "$WORK/dir.c" $(pkg-config --cflags --libs lethe) -Wl,-rpath,"$(pkg-config --variable=libdir lethe)"
got="$(env -u LETHE_BACKEND_DIR "$WORK/dir")"
[ "$(realpath "$got")" = "$(realpath "$LIBDIR/lethe")" ] || fail "lethe_backend_dir() = $got, want $LIBDIR/lethe"

step "C example through pkg-config"
CFLAGS="-O2 $XF" LDFLAGS="$XF" make -s -C "$WORK/examples/simple" >&2
"$WORK/examples/simple/simple" "$MODEL" "$PROMPT" "$N_TOKENS" > "$WORK/simple.out"
OMP_WAIT_POLICY=passive "$PREFIX/bin/lethe" generate -m "$MODEL" -p "$PROMPT" -n "$N_TOKENS" --temp 0 -c 512 > "$WORK/cli.out"
{ printf '%s' "$PROMPT"; cat "$WORK/cli.out"; } > "$WORK/want.out"
[ "$(cat "$WORK/simple.out")" = "$(cat "$WORK/want.out")" ] || {
    echo "simple: $(cat "$WORK/simple.out")" >&2; echo "lethe:  $(cat "$WORK/want.out")" >&2
    fail "the C example's greedy stream differs from lethe generate"; }
[ "$(wc -c < "$WORK/cli.out")" -gt 10 ] || fail "the continuation is nearly empty"

step "lethe bench --plot finds the installed bench_report.py"
# Not the build tree's copy: the installed binary looks next to itself. With
# gnuplot the plots appear; without it the one error line is about gnuplot,
# not a missing script.
set +e
env -u LETHE_BENCH_REPORT OMP_WAIT_POLICY=passive LETHE_CACHE="$WORK/cache" "$PREFIX/bin/lethe" bench -m "$MODEL" \
    -p 0 -n 1 -r 1 -t 1 --no-progress -o csv --plot "$WORK/plots" > "$WORK/bench.out" 2> "$WORK/bench.err"
rc=$?
set -e
[ "$(wc -l < "$WORK/bench.out")" -eq 2 ] || fail "bench --plot did not print its row"
if command -v gnuplot >/dev/null; then
    [ "$rc" -eq 0 ] && [ -s "$WORK/plots/bench-tg-depth.svg" ] || { cat "$WORK/bench.err" >&2; fail "no plot from the installed lethe"; }
else
    grep -q "gnuplot not found" "$WORK/bench.err" || { cat "$WORK/bench.err" >&2; fail "bench --plot without gnuplot"; }
fi

step "C example linked statically (pkg-config --static)"
# shellcheck disable=SC2046
cc $XF -std=c11 -O2 -o "$WORK/simple-static" "$WORK/examples/simple/simple.c" \
    $(pkg-config --cflags lethe) -Wl,-Bstatic -llethe -Wl,-Bdynamic $(pkg-config --static --libs-only-other --libs-only-L lethe) \
    $(pkg-config --static --libs lethe | tr ' ' '\n' | grep -v '^-llethe$' | tr '\n' ' ')
ldd "$WORK/simple-static" | grep -q liblethe && fail "the static build links liblethe.so"
"$WORK/simple-static" "$MODEL" "$PROMPT" "$N_TOKENS" > "$WORK/static.out"
cmp -s "$WORK/static.out" "$WORK/simple.out" || fail "static and shared builds stream different text"

step "C++ example through find_package(lethe)"
cmake -S "$WORK/examples/cpp-chat" -B "$WORK/build-cpp" -G Ninja -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS="$XF" -DCMAKE_EXE_LINKER_FLAGS="$XF" >/dev/null
cmake --build "$WORK/build-cpp" >/dev/null
# grep without -q: an early exit would SIGPIPE ldd, which pipefail reports as a failure
ldd "$WORK/build-cpp/lethe-chat" | grep "$LIBDIR/liblethe.so" >/dev/null || fail "lethe-chat does not use the installed liblethe.so"
"$WORK/build-cpp/lethe-chat" "$MODEL" "What is the capital of France?" 16 > "$WORK/cpp.out"
OMP_WAIT_POLICY=passive "$PREFIX/bin/lethe" chat -m "$MODEL" -p "What is the capital of France?" -n 16 --temp 0 -c 512 \
    > "$WORK/chat.out"
cmp -s "$WORK/cpp.out" "$WORK/chat.out" || fail "the C++ example's answer '$(cat "$WORK/cpp.out")' differs from lethe chat's '$(cat "$WORK/chat.out")'"
[ "$(wc -c < "$WORK/cpp.out")" -gt 10 ] || fail "the C++ example's answer is nearly empty"

step "C++ example through find_package(lethe), lethe::lethe_static"
cmake -S "$WORK/examples/cpp-chat" -B "$WORK/build-cpp-static" -G Ninja -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DLETHE_CHAT_STATIC=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS="$XF" -DCMAKE_EXE_LINKER_FLAGS="$XF" >/dev/null
cmake --build "$WORK/build-cpp-static" >/dev/null
ldd "$WORK/build-cpp-static/lethe-chat" | grep -q liblethe && fail "lethe::lethe_static links liblethe.so"
"$WORK/build-cpp-static/lethe-chat" "$MODEL" "What is the capital of France?" 16 > "$WORK/cpp-static.out"
cmp -s "$WORK/cpp-static.out" "$WORK/chat.out" || fail "the static C++ example's answer differs from lethe chat's"
step "ok"
