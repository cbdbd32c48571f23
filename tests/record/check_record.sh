#!/usr/bin/env bash
# check_record.sh REPLAY SCENARIO_DIR: record every scenario's run (MEMBACKING_RECORD) in each
# layout, then replay each recording in both layouts: a recording must pass. A recording must
# also be whole: no line the format cannot replay (written as a comment), and every kind of
# manager command the scenario runs (transactions, replaces, locks and unlocks included) is in
# it, as a line of its own or as `async` (a request in flight across a lock or an unlock).
set -uo pipefail
replay=$1
dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0 n=0
# The manager commands a recording holds: each kind a scenario runs (and expects to succeed:
# names that do not exist are answered by the runner) must be recorded.
kinds=('region add' 'region map' 'region unmap' 'region remove' 'mapping add' 'mapping remove'
       'mapping replace' 'txn begin' 'txn commit' 'mapper add' 'partition add'
       'dirty start' 'dirty sync' 'dirty stop' 'protect' 'lock' 'unlock')

# whole SCENARIO RECORDING: false (after saying why) when the recording misses something.
whole() {
  local ok=0 kind
  local unsaid='not replayable|out of memory while recording'
  if grep -qE "$unsaid" "$2"; then
    echo "FAIL recording of $1 has lines that do not replay:"; grep -nE "$unsaid" "$2" | head -3
    ok=1
  fi
  for kind in "${kinds[@]}"; do
    if grep -E "^(async [^ ]+ )?$kind( |$)" "$1" | grep -qv '=> error:' &&
       ! grep -qE "^(async [^ ]+ )?$kind( |$)" "$2"; then
      echo "FAIL recording of $1 has no '$kind' line"; ok=1
    fi
  done
  return $ok
}

for f in "$dir"/*.mbs; do
  grep -q '^require kvm' "$f" && continue     # skipped here: nothing would be recorded
  base=$(basename "$f" .mbs)
  for rec_layout in single spread; do
    rec="$tmp/$base.$rec_layout.mbs"
    if ! MEMBACKING_RECORD="$rec" "$replay" --quiet --layout=$rec_layout "$f" >/dev/null; then
      echo "FAIL recording run: $f ($rec_layout)"; fail=1; continue
    fi
    whole "$f" "$rec" || fail=1
    for layout in single spread; do
      n=$((n + 1))
      if ! out=$("$replay" --layout=$layout "$rec" 2>&1); then
        echo "FAIL replay of the recording of $base ($rec_layout) in $layout:"; echo "$out" | head -5
        fail=1
      fi
    done
  done
done
echo "$n recordings replayed"
exit $fail
