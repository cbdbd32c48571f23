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
cat > "$root/vmm.c" <<'C'
#include <membacking.h>
#include <stdio.h>
int main(void) {
  int err = 0;
  mb_loop *loop = mb_loop_start("vmm", &err);
  if (!loop) return 1;
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = loop};
  mb_mm *mm = NULL;
  if (mb_mm_create(&cfg, &mm)) return 2;
  mb_region_params rp = {.name = "ram", .gpa = 0, .size = 1 << 20, .priority = 255};
  mb_region_id id;
  int rc = mb_region_add_sync(mm, &rp, &id);
  if (!rc) rc = mb_region_map_sync(mm, id, true);
  mb_mm_destroy(mm);
  mb_loop_stop(loop);
  mb_loop_free(loop);
  printf("region add+map: %s\n", membacking_strerror(rc));
  return rc ? 3 : 0;
}
C
# shellcheck disable=SC2046
cc -std=gnu11 -o "$root/vmm" "$root/vmm.c" $(pkg-config --cflags --libs membacking)
"$root/vmm"
# The tools a VMM author uses on recordings and traces are installed and run.
bin="$root$prefix/bin"
for tool in membacking-replay membacking-trace; do
  [ -x "$bin/$tool" ] || { echo "$tool was not installed in $prefix/bin"; exit 1; }
done
printf 'object memfd ram 64K fill=0x11\nregion add ram 0 64K\nmapping add ram 0 64K ram 0\nregion map ram\nmapper add m eager\nread m 0 2 => 1111\n' > "$root/t.mbs"
"$bin/membacking-replay" --quiet "$root/t.mbs"
"$bin/membacking-trace" --help >/dev/null 2>&1 || [ $? -eq 2 ] # usage: 0 or 2, not a crash
echo "prefix $prefix: installed headers, pkg-config and tools work"
