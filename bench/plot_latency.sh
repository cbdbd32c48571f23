#!/bin/sh
# plot_latency.sh: plot the latency distributions of map.soft and map.kvm, each with its
# interleaved baseline, from the samples membacking-bench saves with --csv.
#
#   membacking-bench --filter map.soft --filter map.kvm --csv DIR
#   bench/plot_latency.sh DIR [OUT]      (OUT: .svg or .png; defaults to bench/latency.svg)
#
# Reads DIR/map.soft.csv and DIR/map.kvm.csv (columns bench,round,ns: the benchmark's samples
# and its baseline's, README.md "Output"). A benchmark that was skipped (map.kvm without
# /dev/kvm) has no file: its panel says so. Each panel is the empirical CDF, i.e. the fraction
# of operations that took at most x, on a log time axis; the legend gives n, p50 and p99
# (nearest rank, as the harness computes them).
#
# Needs gnuplot (Debian: gnuplot-nox), awk and sort.
set -eu

usage() {
  echo "usage: $0 CSV_DIR [OUT.svg|OUT.png]" >&2
  exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
dir=$1
out=${2:-$(dirname "$0")/latency.svg}
[ -d "$dir" ] || { echo "$0: $dir: not a directory (run membacking-bench --csv $dir first)" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "$0: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# dist FILE BENCH: writes $tmp/BENCH.dat, lines "us fraction spectrum" (at most ~4000 of
# them: every sample of the tail, evenly thinned below it), where fraction = rank / n and
# spectrum = 1 / (1 - rank / (n + 1)), and prints "n p50_us p99_us p95_us", or nothing when
# FILE has no sample of BENCH.
dist() {
  [ -f "$1" ] || return 0
  awk -F, -v b="$2" 'NR > 1 && $1 == b { print $3 / 1000 }' "$1" | LC_ALL=C sort -g >"$tmp/$2.sorted"
  n=$(wc -l <"$tmp/$2.sorted")
  [ "$n" -gt 0 ] || return 0
  awk -v n="$n" -v out="$tmp/$2.dat" '
    function rank(q) { r = int(n * q); if (r < n * q) r++; return r < 1 ? 1 : r }
    BEGIN {
      step = int(n / 2000); if (step < 1) step = 1
      r50 = rank(0.50); r95 = rank(0.95); r99 = rank(0.99)
    }
    NR == r50 { p50 = $1 }
    NR == r95 { p95 = $1 }
    NR == r99 { p99 = $1 }
    NR == 1 || NR % step == 0 || NR > n - 2000 || NR == r50 || NR == r99 {
      print $1, NR / n, 1 / (1 - NR / (n + 1)) > out
    }
    END { printf "%d %.3g %.3g %.3g\n", n, p50, p99, p95 }' "$tmp/$2.sorted"
}

# say LINE: print LINE as is (dash's echo would turn the "\\n" meant for gnuplot into newlines).
say() { printf '%s\n' "$*"; }

# panels BENCH BASELINE: gnuplot commands for the two panels of one benchmark: the CDF of the
# body (linear time axis up to twice the larger of the two p95s) and the percentile spectrum
# (log-log: the tail).
panels() {
  m=$(dist "$dir/$1.csv" "$1")
  b=$(dist "$dir/$1.csv" "$2")
  if [ -z "$m" ]; then
    for what in "distribution" "percentiles"; do
      say "set title '$1: $what'"
      say "unset key"
      say "set label 1 \"$1 not measured on this machine\\n(no $1.csv in the --csv directory:\\nskipped, e.g. no /dev/kvm)\" at graph 0.5, 0.5 center"
      say "unset logscale"
      say "set xtics auto"
      say "set xlabel ''"
      say "set ylabel ''"
      say "plot [0:1] [0:1] 1/0 notitle"
      say "unset label 1"
    done
    return
  fi
  bench=$1 base=$2
  set -- $m
  mt="$bench: n=$1, p50 $2 us, p99 $3 us"
  xmax=$4
  mline="'$tmp/$bench.dat' using 1:COL with lines lw 2 lc rgb '#1f77b4' title '$mt'"
  bline=""
  if [ -n "$b" ]; then
    set -- $b
    bline=", '$tmp/$base.dat' using 1:COL with lines lw 2 dt 2 lc rgb '#d62728' title '$base (floor): n=$1, p50 $2 us, p99 $3 us'"
    xmax=$(awk -v a="$xmax" -v b="$4" 'BEGIN { print (a > b ? a : b) }')
  fi
  xmax=$(awk -v x="$xmax" 'BEGIN { print x * 2 }')
  say "set title '$bench vs its floor, same run: distribution'"
  say "unset logscale"
  say "set key below Left reverse"
  say "set xlabel 'time per operation (us)'"
  say "set ylabel 'fraction of operations taking at most x'"
  say "set xrange [0:$xmax]"
  say "set yrange [0:1]"
  say "set xtics auto"
  say "plot $(printf '%s' "$mline$bline" | sed 's/using 1:COL/using 1:2/g')"
  say "set title '$bench vs its floor, same run: percentiles (the tail)'"
  say "set logscale xy"
  say "set key inside top left Left reverse"
  say "set xlabel 'percentile'"
  say "set ylabel 'time per operation (us, log scale)'"
  say "set xrange [1:*]"
  say "set yrange [*:*]"
  say "set xtics ('0%%' 1, '50%%' 2, '90%%' 10, '99%%' 100, '99.9%%' 1000, '99.99%%' 10000)"
  say "plot $(printf '%s' "$mline$bline" | sed 's/using 1:COL/using 3:1/g')"
}

{
  case $out in
  *.png) say "set terminal pngcairo size 1200,900 noenhanced font 'Sans,10' background rgb 'white'" ;;
  *) say "set terminal svg size 1200,900 dynamic noenhanced font 'Sans,11' background rgb 'white'" ;;
  esac
  say "set output '$out'"
  say "set multiplot layout 2,2 columnsfirst title 'membacking-bench: one operation = region map + region unmap of a 2 MiB region (samples from --csv)'"
  say "set grid xtics ytics mxtics mytics"
  panels map.soft syscalls.map_unmap
  panels map.kvm syscalls.map_unmap_kvm
  say "unset multiplot"
} >"$tmp/plot.gp"
gnuplot "$tmp/plot.gp"
echo "$out"
