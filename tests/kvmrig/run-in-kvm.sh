#!/usr/bin/env bash
# run-in-kvm.sh CMD [ARGS...]: run CMD where /dev/kvm exists, on a machine without it: in a
# QEMU TCG (pure emulation) VM whose CPU model has AMD SVM, with kvm_amd loaded. The host's root
# is shared read-only (writes go to a throwaway overlay); RIG_RW (default: this checkout) is
# shared writable at the same paths. cwd, environment, stdout, stderr and the exit status carry
# over; stdin is /dev/null. The rig's own failures exit 125, a timeout 124. See README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }
die() { echo "rig: $*" >&2; exit 125; }
kernel=${RIG_KERNEL:-6.12}
timeout=${RIG_TIMEOUT:-600}
rw=${RIG_RW-$(cd "$here/../.." && pwd)}
verbose=${RIG_VERBOSE:-0}

cache=$(cd "${RIG_CACHE:-$here/../../build-kvmrig}" 2>/dev/null && pwd) || die "no cache: run $here/prepare.sh"
# The newest cached kernel of that version (6.1 must not pick 6.12).
kdir=$(ls -d "$cache/kernels/linux-image-$kernel"[.+-]* 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$kdir" ] || die "no kernel $kernel in $cache: run $here/prepare.sh"
kver=$(ls "$kdir/lib/modules")
"$here/build-initramfs.sh" "$kdir" "$cache/boot" || die "cannot build the initramfs"
kimage=$cache/boot/vmlinux-$kver
[ -f "$kimage" ] || kimage=$kdir/boot/vmlinuz-$kver

job=$(mktemp -d /tmp/kvmrig.XXXXXX)
qpid='' drains=''
cleanup() {
  [ -z "$qpid" ] || kill "$qpid" 2>/dev/null || true
  [ -z "$drains" ] || kill $drains 2>/dev/null || true
  [ "$verbose" = keep ] || rm -rf "$job"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The job: the environment, the cwd and the command, quoted for the host's bash in the guest.
{
  echo '#!/bin/bash'
  env -0 | while IFS= read -r -d '' kv; do
    k=${kv%%=*}
    [[ $k =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    case $k in PWD | OLDPWD | SHLVL | _) continue ;; esac
    printf 'export %s=%q\n' "$k" "${kv#*=}"
  done
  printf 'cd -- %q || exit 126\n' "$PWD"
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} > "$job/job.sh"
cat > "$job/rig.conf" <<CONF
KVM_AMD_PARAMS="${RIG_KVM_AMD_PARAMS:-}"
RIG_RW="$rw"
RIG_HOSTNAME="$(hostname 2>/dev/null || true)"
CONF

# stdout/stderr: QEMU writes the guest's virtio serial ports into FIFOs that we drain.
mkfifo "$job/out.out" "$job/out.in" "$job/err.out" "$job/err.in"
cat < "$job/out.out" &
drains=$!
cat < "$job/err.out" >&2 &
drains="$drains $!"

fs="security_model=none,multidevs=remap"
# Boot trims: initcalls that are slow under TCG and useless here (entropy and crypto self-tests,
# BPF's BTF registrations, module-signing certificates).
trims="cryptomgr.notests initcall_blacklist=jent_mod_init,bpf_tcp_ca_kfunc_init,bpf_dummy_struct_ops_init,bpf_kfunc_init,load_system_certificate_list,crypto_kdf108_init,init_encrypted,trace_eval_init"
# shellcheck disable=SC2054  # the commas are inside QEMU's options
args=(
  -nodefaults -no-user-config -display none -no-reboot
  -machine q35,accel=tcg -cpu "${RIG_CPU:-max}" -smp "${RIG_SMP:-1}" -m "${RIG_MEM:-2048}"
  -kernel "$kimage" -initrd "$cache/boot/initramfs-$kver.cpio"
  -append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic mitigations=off tsc=reliable no_timer_check i8042.noaux i8042.nokbd i8042.nopnp 8250.nr_uarts=1 rdinit=/init $trims ${RIG_APPEND:-}"
  -serial "file:$job/console.log"
  -device virtio-serial-pci,id=vs
  -chardev "pipe,id=out,path=$job/out" -device virtserialport,bus=vs.0,chardev=out,name=rig.out
  -chardev "pipe,id=err,path=$job/err" -device virtserialport,bus=vs.0,chardev=err,name=rig.err
  -fsdev "local,id=fsjob,path=$job,$fs" -device virtio-9p-pci,fsdev=fsjob,mount_tag=job
  -fsdev "local,id=fsroot,path=/,$fs,readonly=on" -device virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot
)
i=0
for d in $rw; do
  [[ $d == /* && -d $d ]] || die "RIG_RW: $d is not an absolute path to a directory"
  args+=(-fsdev "local,id=fsrw$i,path=$d,$fs" -device "virtio-9p-pci,fsdev=fsrw$i,mount_tag=rw$i")
  i=$((i + 1))
done

start=$SECONDS
timeout -k 5 "$timeout" qemu-system-x86_64 "${args[@]}" ${RIG_QEMU_ARGS:-} </dev/null >"$job/qemu.log" 2>&1 &
qpid=$!
qrc=0
wait $qpid || qrc=$?
qpid=
# Unblock a drain still waiting in open() (QEMU never opened its FIFO), then let both see EOF.
: 3<>"$job/out.out" 4<>"$job/err.out"
wait $drains 2>/dev/null || true
drains=

if [ "$verbose" != 0 ]; then
  { echo "rig: ---- console ----"; cat "$job/console.log"; echo "rig: qemu exit $qrc, $((SECONDS - start)) s"; } >&2
fi
[ "$qrc" != 124 ] && [ "$qrc" != 137 ] || { echo "rig: timed out after ${timeout} s (RIG_TIMEOUT)" >&2; exit 124; }
[ ! -f "$job/rc" ] || exit "$(cat "$job/rc")"
# The first line says why (init's failure, else a kernel crash, else QEMU's last word).
when=before
[ ! -f "$job/started" ] || when=while
why=$(head -n 1 "$job/fail" 2>/dev/null || true)
[ -n "$why" ] || [ $when = before ] ||
  why=$(grep -m 1 -E 'Kernel panic|BUG:|Oops|general protection' "$job/console.log" || true)
[ -n "$why" ] || why=$(grep -v '^ *$' "$job/qemu.log" | tail -n 1 || true)
{
  echo "rig: the VM stopped $when the command ran (qemu exit $qrc): ${why:-no reason given}"
  echo "rig: ---- qemu ----"
  tail -n 20 "$job/qemu.log"
  echo "rig: ---- console (tail) ----"
  tail -n 40 "$job/console.log" 2>/dev/null || true
} >&2
exit 125
