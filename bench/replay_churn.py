#!/usr/bin/env python3
"""replay_churn.py: issue 14's replayer measurement: the DAX churn file (gen_dax_churn.py)
replayed by membacking-replay in both layouts, whole processes, alternating, with the wall
and CPU time (user + system, all threads, from wait4) of each run; prints the medians.

    python3 bench/replay_churn.py --replay build/tests/replay/membacking-replay
        [--ops 20000] [--runs 5] [--file FILE.mbs] [--json]

The runs alternate single, spread, spread, single, ... so that drift hits both layouts
alike. Every run must PASS (exit status 0); a failing one stops the script with status 1.
--json prints one object per layout and one with the ratios (spread over single), instead of
the table. No timing is judged here: it reports, it asserts nothing about speed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_dax_churn  # noqa: E402  (the generator, next to this file)

LAYOUTS = ("single", "spread")


def run_once(replay, layout, path):
    """One whole replay process: (wall s, user s, sys s). Raises on a failed replay."""
    t0 = time.monotonic()
    proc = subprocess.Popen([replay, "--layout=" + layout, "--quiet", path],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError("%s --layout=%s %s: exit %d\n%s"
                           % (replay, layout, path, proc.returncode, out.decode(errors="replace")))
    return wall, ru.ru_utime, ru.ru_stime


def order(runs):
    """single, spread, spread, single, ...: each layout goes first in half the rounds."""
    for r in range(runs):
        yield from (LAYOUTS if r % 2 == 0 else LAYOUTS[::-1])


def measure(replay, path, runs):
    samples = {layout: [] for layout in LAYOUTS}
    for layout in order(runs):
        samples[layout].append(run_once(replay, layout, path))
    return samples


def summary(layout, runs, ops):
    wall = [w for w, _, _ in runs]
    cpu = [u + s for _, u, s in runs]
    return {
        "replay": "dax_churn", "layout": layout, "ops": ops, "runs": len(runs),
        "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
        "user_s": statistics.median([u for _, u, _ in runs]),
        "sys_s": statistics.median([s for _, _, s in runs]),
        "wall_us_per_op": statistics.median(wall) * 1e6 / ops,
        "cpu_us_per_op": statistics.median(cpu) * 1e6 / ops,
        "wall_all": [round(w, 4) for w in wall], "cpu_all": [round(c, 4) for c in cpu],
    }


def print_table(rows, ratio):
    print("# membacking-replay on the DAX churn file (%d ops, %d runs per layout, medians;"
          % (rows[0]["ops"], rows[0]["runs"]))
    print("# whole processes, CPU = user + system of all threads)")
    print("%-8s %9s %9s %9s %9s %12s %12s" % ("layout", "wall", "cpu", "user", "sys",
                                               "wall/op", "cpu/op"))
    for r in rows:
        print("%-8s %8.3fs %8.3fs %8.3fs %8.3fs %10.1fus %10.1fus"
              % (r["layout"], r["wall_s"], r["cpu_s"], r["user_s"], r["sys_s"],
                 r["wall_us_per_op"], r["cpu_us_per_op"]))
    print("spread / single: wall %.2fx, cpu %.2fx (issue 14's target: at most 2x each)"
          % (ratio["wall_ratio"], ratio["cpu_ratio"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay", required=True, help="the membacking-replay program")
    parser.add_argument("--ops", type=int, default=20000,
                        help="operations in the file (generated, or --file's); default 20000")
    parser.add_argument("--runs", type=int, default=5, help="runs per layout (default 5)")
    parser.add_argument("--file", help="replay this file instead of generating one")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    args = parser.parse_args()
    if args.runs < 1 or args.ops < 2 or args.ops % 2:
        parser.error("--runs must be >= 1, --ops even and >= 2")
    with tempfile.TemporaryDirectory(prefix="mb-churn-") as tmp:
        path = args.file
        if path is None:
            path = os.path.join(tmp, "dax_churn.mbs")
            with open(path, "w") as f:
                gen_dax_churn.write(f, args.ops)
        try:
            samples = measure(args.replay, path, args.runs)
        except (RuntimeError, OSError) as e:
            print("replay_churn: %s" % e, file=sys.stderr)
            return 1
    rows = [summary(layout, samples[layout], args.ops) for layout in LAYOUTS]
    single, spread = rows
    ratio = {"replay": "dax_churn", "ratio": "spread/single",
             "wall_ratio": spread["wall_s"] / single["wall_s"] if single["wall_s"] else None,
             "cpu_ratio": spread["cpu_s"] / single["cpu_s"] if single["cpu_s"] else None}
    if args.json:
        for obj in rows + [ratio]:
            print(json.dumps(obj))
    else:
        print_table(rows, ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
