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
echo "prefix $prefix: installed headers and pkg-config work"
