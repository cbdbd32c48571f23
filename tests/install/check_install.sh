#!/usr/bin/env bash
# check_install.sh BUILD_DIR: install into a scratch root and build a small VMM-like program
# against it with nothing but `pkg-config --cflags --libs membacking`, as an embedder would.
set -euo pipefail
build=$1
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
meson install -C "$build" --destdir "$root" --no-rebuild --quiet >/dev/null
pc=$(dirname "$(find "$root" -name membacking.pc | head -n 1)")
[ -n "$pc" ] || { echo "membacking.pc was not installed"; exit 1; }
prefix=$(sed -n 's/^prefix=//p' "$pc/membacking.pc")
export PKG_CONFIG_PATH="$pc" PKG_CONFIG_SYSROOT_DIR="$root"
here=$(cd "$(dirname "$0")" && pwd)
flags=$(pkg-config --cflags membacking)
case " $flags " in
*/membacking\ *) echo "pkg-config puts the headers' own folder on the include path: $flags"; exit 1 ;;
esac
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -o "$root/vmm" "$here/vmm.c" $(pkg-config --cflags --libs membacking)
"$root/vmm"
# shellcheck disable=SC2046
c++ -std=c++17 -Wall -Wextra -Werror -o "$root/vmm-cpp" "$here/vmm.cpp" $(pkg-config --cflags --libs membacking)
"$root/vmm-cpp"
# The same VMM as a meson project: dependency('membacking') finds the installed library.
mkdir -p "$root/proj"
cp "$here/vmm.c" "$root/proj/"
printf "project('vmm', 'c', default_options: ['c_std=c11', 'werror=true', 'warning_level=2'])\nexecutable('vmm', 'vmm.c', dependencies: dependency('membacking'))\n" > "$root/proj/meson.build"
meson setup "$root/proj/build" "$root/proj" >/dev/null
ninja -C "$root/proj/build" >/dev/null
"$root/proj/build/vmm"
# The tools a VMM author uses on recordings and traces are installed and run.
bin="$root$prefix/bin"
for tool in membacking-replay membacking-trace; do
  [ -x "$bin/$tool" ] || { echo "$tool was not installed in $prefix/bin"; exit 1; }
done
printf 'object memfd ram 64K fill=0x11\nregion add ram 0 64K\nmapping add ram 0 64K ram 0\nregion map ram\nmapper add m eager\nread m 0 2 => 1111\n' > "$root/t.mbs"
"$bin/membacking-replay" --quiet "$root/t.mbs"
"$bin/membacking-trace" --help >/dev/null 2>&1 || [ $? -eq 2 ] # usage: 0 or 2, not a crash
echo "prefix $prefix: installed headers (C11, C++17), pkg-config, meson and tools work"
