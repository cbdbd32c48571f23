#!/usr/bin/env bash
# check_record.sh REPLAY SCENARIO_DIR: record every scenario's run (MEMBACKING_RECORD) in each
# layout, then replay each recording in both layouts: a recording must pass.
set -uo pipefail
replay=$1
dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0 n=0
for f in "$dir"/*.mbs; do
  grep -q '^require kvm' "$f" && continue     # skipped here: nothing would be recorded
  grep -qE '^(async [^ ]+ )?(lock|unlock) ' "$f" && continue  # locks are not recorded
  base=$(basename "$f" .mbs)
  for rec_layout in single spread; do
    rec="$tmp/$base.$rec_layout.mbs"
    if ! MEMBACKING_RECORD="$rec" "$replay" --quiet --layout=$rec_layout "$f" >/dev/null; then
      echo "FAIL recording run: $f ($rec_layout)"; fail=1; continue
    fi
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
