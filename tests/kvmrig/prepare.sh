#!/usr/bin/env bash
# prepare.sh: install what the rig needs and fetch its kernel into the cache (RIG_CACHE, default
# build-kvmrig/ at the top of the checkout). Idempotent: a kernel already in the cache is kept,
# so later runs need no network. RIG_KERNEL picks Debian 12's 6.12 (the default) or 6.1.
# The kernel is only unpacked (dpkg-deb -x): nothing goes into /boot and no hooks run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${RIG_CACHE:-$here/../../build-kvmrig}
kernel=${RIG_KERNEL:-6.12}
export DEBIAN_FRONTEND=noninteractive
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

need=()
for p in qemu-system-x86 busybox-static cpio kmod zstd xz-utils binutils python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "kvmrig: installing ${need[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$cache/kernels" "$cache/boot"
cache=$(cd "$cache" && pwd)
# The cache holds kernels/linux-image-VERSION/ (the unpacked package, with modules.dep).
have=$(ls -d "$cache/kernels/linux-image-$kernel"[.+-]* 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$have" ]; then
  # A metapackage names the newest image: 6.12 has its own; 6.1 is the release's default.
  case $kernel in
    6.1) meta=linux-image-amd64 ;;
    *) meta=linux-image-$kernel-amd64 ;;
  esac
  image() { apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
  pkg=$(image)
  [ -n "$pkg" ] || { "${sudo[@]}" apt-get update -qq; pkg=$(image); }
  [ -n "$pkg" ] || { echo "kvmrig: no package for kernel $kernel ($meta)" >&2; exit 1; }
  echo "kvmrig: fetching $pkg"
  tmp=$(mktemp -d "$cache/fetch.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # The package lists may be stale (the mirror dropped that version): update once, retry.
  fetch() {
    (cd "$tmp" && apt-get download -q "$pkg" 2>&1 | grep -v unsandboxed || true)
    ls "$tmp"/*.deb >/dev/null 2>&1
  }
  fetch || { "${sudo[@]}" apt-get update -qq; pkg=$(image); fetch; } ||
    { echo "kvmrig: cannot download $pkg" >&2; exit 1; }
  dpkg-deb -x "$tmp"/*.deb "$tmp/root"
  kver=$(ls "$tmp/root/lib/modules")
  depmod -b "$tmp/root" "$kver"
  have=$cache/kernels/linux-image-$kver
  mv "$tmp/root" "$have"
fi
kver=$(ls "$have/lib/modules")
"$here/build-initramfs.sh" "$have" "$cache/boot"
echo "kvmrig: kernel $kver ready in $cache"
