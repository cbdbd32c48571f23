#!/usr/bin/env bash
# build-initramfs.sh KERNEL_DIR OUT_DIR: the guest's boot files for an unpacked Debian kernel,
# rebuilt only when older than their inputs:
#   OUT_DIR/initramfs-KVER.cpio  static busybox, /init, and the modules for virtio, 9p, overlay
#                                and kvm_amd with their dependencies
#   OUT_DIR/vmlinux-KVER         the uncompressed kernel, which QEMU boots through PVH (no
#                                firmware, no decompression in the guest: seconds saved under TCG)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k=$(cd "$1" && pwd)
out=$2
kver=$(ls "$k/lib/modules")
cpio=$out/initramfs-$kver.cpio
if [ ! -f "$cpio" ] || [ "$here/init" -nt "$cpio" ] || [ "$0" -nt "$cpio" ]; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,dev,proc,sys,host,job,lower,upper,mods,tmp}
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  cp "$here/init" "$root/init"
  chmod 755 "$root/init"
  # One list per group, in load order (modprobe resolves the dependencies; builtins print none).
  group() {
    local name=$1 f b
    shift
    : > "$root/mods/$name.list"
    for m in "$@"; do
      for f in $(modprobe -d "$k" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'); do
        b=$(basename "$f")
        b=${b%.xz}
        b=${b%.zst}
        grep -qx "$b" "$root/mods/$name.list" && continue
        case $f in
          *.xz) xz -dc "$f" > "$root/mods/$b" ;;
          *.zst) zstd -qdc "$f" > "$root/mods/$b" ;;
          *) cp "$f" "$root/mods/$b" ;;
        esac
        # Without .BTF a module loads much faster under TCG; the signature stays unchecked.
        objcopy --remove-section=.BTF "$root/mods/$b" 2>/dev/null || true
        echo "$b" >> "$root/mods/$name.list"
      done
    done
  }
  group base virtio_pci virtio_console 9pnet_virtio 9p overlay
  group kvm kvm_amd  # TCG emulates AMD SVM, not Intel VMX
  (cd "$root" && find . | sort | cpio -o -H newc --quiet -R 0:0) > "$cpio.tmp.$$"
  mv "$cpio.tmp.$$" "$cpio"
fi
vmlinux=$out/vmlinux-$kver
if [ ! -f "$vmlinux" ]; then
  # Without it run-in-kvm.sh boots the compressed bzImage, only slower.
  "$here/extract-vmlinux.py" "$k/boot/vmlinuz-$kver" "$vmlinux.tmp.$$" && mv "$vmlinux.tmp.$$" "$vmlinux" ||
    { rm -f "$vmlinux.tmp.$$"; echo "kvmrig: no vmlinux extracted, the bzImage will boot" >&2; }
fi
