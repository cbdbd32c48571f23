#!/usr/bin/env bash
# setup.sh: install what membacking needs on Debian 12, build it, and run one job.
#   ./setup.sh demo    the main job: the demo VMM (tests/demo)
#   ./setup.sh test    every test: the normal build, ASan+UBSan, and the concurrent ones under
#                      TSan; ends with the line "N passed, N failed"
#   ./setup.sh bench   the full benchmark table (arguments go to membacking-bench: --quick,
#                      --filter NAME, --json, ...)
#   ./setup.sh plot    the map.soft/map.kvm latency plot (bench/latency.svg), with gnuplot
#   ./setup.sh build   just install and build (build/)
# Works as root, or with sudo for the package step.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(gcc g++ libc6-dev meson ninja-build pkg-config python3 libuv1-dev libcmocka-dev libjemalloc-dev
          clang libclang-rt-14-dev libnuma-dev)

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "setup: installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# configure DIR [meson options...]: set up once, reconfigure when options change.
configure() {
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
  ninja -C "$dir" >/dev/null
}

build_all() {
  install_packages
  configure build
}

# /dev/kvm exists and opens (checked as a character device first: <> would create a file).
kvm_usable() {
  [ -c /dev/kvm ] && { : <>/dev/kvm; } 2>/dev/null
}

summary() {
  python3 - "$@" <<'PY'
import json, sys
ok = bad = skipped = 0
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)["result"]
        if r in ("OK", "EXPECTEDFAIL"): ok += 1
        elif r == "SKIP": skipped += 1
        else: bad += 1
print(f"{ok} passed, {bad} failed, {skipped} skipped")
sys.exit(1 if bad else 0)
PY
}

run_tests() {
  build_all
  local logs=() rc=0
  echo "== tests: default build (jemalloc) =="
  meson test -C build --print-errorlogs || rc=1
  cp build/meson-logs/testlog.json /tmp/mb-testlog-default.json; logs+=(/tmp/mb-testlog-default.json)
  echo "== tests: ASan+UBSan (libc allocator) =="
  configure build-asan -Dallocator=libc -Db_sanitize=address,undefined -Db_lundef=false -Db_lto=false
  meson test -C build-asan --print-errorlogs --no-suite install --no-suite bench -t 4 || rc=1
  cp build-asan/meson-logs/testlog.json /tmp/mb-testlog-asan.json; logs+=(/tmp/mb-testlog-asan.json)
  echo "== tests: TSan, concurrent suite (libc allocator) =="
  configure build-tsan -Dallocator=libc -Db_sanitize=thread -Db_lundef=false -Db_lto=false
  meson test -C build-tsan --print-errorlogs --suite concurrent -t 10 || rc=1
  cp build-tsan/meson-logs/testlog.json /tmp/mb-testlog-tsan.json; logs+=(/tmp/mb-testlog-tsan.json)
  # Without /dev/kvm the KVM tests skipped above: run them again on real KVM, nested under
  # QEMU's emulator (tests/kvmrig). If the rig cannot come up, it counts one skip, not a failure.
  if [ "${MB_KVMRIG:-1}" != 0 ] && ! kvm_usable; then
    echo "== tests: KVM, in the nested-KVM rig (no /dev/kvm here; MB_KVMRIG=0 turns this off) =="
    rm -f /tmp/mb-testlog-kvmrig.json
    RIG_TIMEOUT=${RIG_TIMEOUT:-1500} tests/kvmrig/run-kvm-tests.py build /tmp/mb-testlog-kvmrig.json || rc=1
    [ ! -f /tmp/mb-testlog-kvmrig.json ] || logs+=(/tmp/mb-testlog-kvmrig.json)
  fi
  # One test: the scenario parser and printer under libFuzzer for 60 s (clang, ASan+UBSan).
  # Only its target is built; a failed build fails the test, which then has no program to run.
  echo "== tests: fuzz, scenario parser and printer (clang, libFuzzer, 60 s) =="
  [ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dallocator=libc \
    -Db_sanitize=address,undefined -Db_lundef=false -Db_lto=false >/dev/null
  ninja -C build-fuzz tests/fuzz/fuzz-scenario >/dev/null || rc=1
  meson test -C build-fuzz --no-rebuild --print-errorlogs --suite fuzz --verbose || rc=1
  cp build-fuzz/meson-logs/testlog.json /tmp/mb-testlog-fuzz.json; logs+=(/tmp/mb-testlog-fuzz.json)
  # One test: the fault-injection sweep (tests/fault/sweep.py): every scenario under the n-th
  # failed system call or allocation, both layouts, ASan+UBSan+LSan. Only the replayer is built.
  echo "== tests: fault injection sweep (ASan+UBSan, libc allocator) =="
  [ -f build-fi/build.ninja ] || meson setup build-fi -Dfault_injection=true -Dallocator=libc \
    -Db_sanitize=address,undefined -Db_lundef=false -Db_lto=false >/dev/null
  ninja -C build-fi tests/replay/membacking-replay >/dev/null || rc=1
  meson test -C build-fi --no-rebuild --print-errorlogs --suite fault --verbose || rc=1
  cp build-fi/meson-logs/testlog.json /tmp/mb-testlog-fi.json; logs+=(/tmp/mb-testlog-fi.json)
  summary "${logs[@]}" || rc=1
  return $rc
}

case "${1:-}" in
  demo)
    build_all
    exec build/tests/demo/membacking-demo ;;
  test) run_tests ;;
  bench) build_all; exec build/bench/membacking-bench "${@:2}" ;;
  plot)
    PACKAGES+=(gnuplot-nox)
    build_all
    csv=$(mktemp -d)
    build/bench/membacking-bench --filter map.soft --filter map.kvm --csv "$csv"
    bench/plot_latency.sh "$csv" bench/latency.svg
    rm -rf "$csv" ;;
  build) build_all ;;
  *) echo "usage: $0 demo|test|bench|plot|build" >&2; exit 2 ;;
esac
