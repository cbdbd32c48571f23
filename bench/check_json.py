#!/usr/bin/env python3
"""check_json.py: validate `membacking-bench --json` output against spec/bench.md (version 2).

Reads the output from stdin (it runs nothing itself), e.g. in CI:

    membacking-bench --quick --json | python3 bench/check_json.py [--require NAME ...]

Every line must be one JSON object with the keys of the contract,
    {"bench", "unit", "n", "p50", "p99", "baseline", "baseline_p50", "ratio"},
of the right types; `ratio` must be p50 / baseline_p50 for "ns" and baseline_p50 / p50
for "B/s" (null when there is no baseline figure); percentiles must be ordered (p99 is the
slow tail: p99 >= p50 for time, p99 <= p50 for throughput). A line with "skipped" is a
benchmark that could not run here; one that also says "failed": true is a problem.

Version 2: the rows the spec adds ("Version 2 additions", rpc.cross_thread included) must
carry `cpu_ns` (a non-negative number when measured, null when skipped) and
`baseline_cpu_ns` (a number exactly when baseline_p50 is one, null otherwise); any other
row that carries them is held to the same rule. A row the spec names must name the spec's
baseline (rpc.cross_thread: eventfd.pingpong; map.spread: map.soft; ...), and the floors of
version 2 rows printed as rows of their own (txn.pam.separate, ...) must name none.
--require NAME: NAME must be present and measured, and so must its baseline when it names one
(no `baseline_skipped`). Exit status 0 when everything holds.
"""

import argparse
import json
import math
import re
import sys

KEYS = ("bench", "unit", "n", "p50", "p99", "baseline", "baseline_p50", "ratio")
UNITS = ("ns", "B/s")
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
RATIO_TOLERANCE = 1e-4  # relative; the harness prints ratios with 6 significant digits

# The spec's rows and their floors (None: no baseline). scale.*.N: see spec_baseline().
SPEC_BASELINES = {
    "msg.same_loop": None,
    "rpc.same_loop": None,
    "rpc.cross_thread": "eventfd.pingpong",
    "map.soft": "syscalls.map_unmap",
    "map.kvm": "syscalls.map_unmap_kvm",
    "mapping.dax": "syscalls.map_unmap",
    "fault.lazy": "syscalls.fault_remote",
    "access.read": "memcpy",
    # version 2 additions
    "eventfd.pingpong": None,
    "spin.pingpong": None,
    "map.spread": "map.soft",
    "idle.cpu": None,
    "mapping.replace": "syscalls.map_replace",
    "txn.pam": "txn.pam.separate",
    "txn.pam.kvm": "txn.pam.separate.kvm",
    "access.change": "syscalls.mprotect",
    "dirty.sync.kvm": "syscalls.dirty_log",
    "protect.kvm": "syscalls.slot_split",
    # the floors of version 2 rows that are rows of their own
    "syscalls.map_replace": None,
    "txn.pam.separate": None,
    "txn.pam.separate.kvm": None,
}
# Rows that report cpu_ns and baseline_cpu_ns (spec version 2).
CPU_ROWS = frozenset(("eventfd.pingpong", "spin.pingpong", "rpc.cross_thread", "map.spread",
                      "idle.cpu", "mapping.replace", "txn.pam", "txn.pam.kvm", "access.change",
                      "dirty.sync.kvm", "protect.kvm"))
SCALE = re.compile(r"^scale\.(regions|mappings)\.(10|100|1000|10000)$")
MISSING = object()


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def reject_constant(name):
    raise ValueError(f"non-JSON number {name}")


def check_measured(obj, problem):
    unit = obj["unit"]
    if obj["n"] < 1:
        problem("n must be >= 1 for a measured benchmark")
    for key in ("p50", "p99"):
        v = obj[key]
        if not is_number(v) or v < 0 or (unit == "B/s" and v == 0):
            problem(f"{key} must be a non-negative number, got {v!r}")
            return
    p50, p99 = obj["p50"], obj["p99"]
    if unit == "ns" and p99 < p50:
        problem(f"p99 {p99} < p50 {p50} for a time")
    if unit == "B/s" and p99 > p50:
        problem(f"p99 {p99} > p50 {p50} for a throughput (p99 is the slow tail)")

    base, base_p50, ratio = obj["baseline"], obj["baseline_p50"], obj["ratio"]
    if base is None:
        if base_p50 is not None or ratio is not None:
            problem("baseline is null but baseline_p50 or ratio is not")
        return
    if not isinstance(base, str) or not NAME.match(base):
        problem(f"baseline must be a benchmark name or null, got {base!r}")
        return
    if base_p50 is None:
        if ratio is not None:
            problem("baseline_p50 is null but ratio is not")
        if not isinstance(obj.get("baseline_skipped"), str):
            problem("baseline_p50 is null without a baseline_skipped reason")
        return
    if not is_number(base_p50) or base_p50 < 0:
        problem(f"baseline_p50 must be a non-negative number or null, got {base_p50!r}")
        return
    num, den = (p50, base_p50) if unit == "ns" else (base_p50, p50)
    if den == 0:
        if ratio is not None:
            problem("ratio must be null when its denominator is 0")
        return
    expected = num / den
    if not is_number(ratio) or ratio <= 0:
        problem(f"ratio must be a positive number, got {ratio!r}")
    elif abs(ratio - expected) > RATIO_TOLERANCE * expected + 1e-12:
        what = "p50 / baseline_p50" if unit == "ns" else "baseline_p50 / p50"
        problem(f"ratio {ratio} != {what} = {expected:.6g}")


def spec_baseline(name):
    """The spec's baseline of a row (None: none), or MISSING for a row the spec does not name."""
    m = SCALE.match(name)
    if m:
        return f"scale.{m.group(1)}.10"
    return SPEC_BASELINES.get(name, MISSING)


def check_cpu(obj, problem):
    """cpu_ns and baseline_cpu_ns: required on the version-2 rows, checked wherever present."""
    name = obj["bench"]
    if name in CPU_ROWS:
        for key in ("cpu_ns", "baseline_cpu_ns"):
            if key not in obj:
                problem(f"missing key {key} (a version 2 row)")
    measured = "skipped" not in obj
    if "cpu_ns" in obj:
        v = obj["cpu_ns"]
        if measured and (not is_number(v) or v < 0):
            problem(f"cpu_ns must be a non-negative number, got {v!r}")
        elif not measured and v is not None:
            problem(f"cpu_ns must be null for a skipped benchmark, got {v!r}")
    if "baseline_cpu_ns" in obj:
        v = obj["baseline_cpu_ns"]
        if measured and is_number(obj["baseline_p50"]):
            if not is_number(v) or v < 0:
                problem(f"baseline_cpu_ns must be a non-negative number, got {v!r}")
        elif v is not None:
            problem(f"baseline_cpu_ns must be null without a baseline figure, got {v!r}")


def check_spec_baseline(obj, problem):
    want = spec_baseline(obj["bench"])
    if want is not MISSING and obj["baseline"] != want:
        problem(f"baseline must be {want!r} (spec/bench.md), got {obj['baseline']!r}")


def check_line(obj, problem):
    if not isinstance(obj, dict):
        problem("not a JSON object")
        return None
    missing = [k for k in KEYS if k not in obj]
    if missing:
        problem(f"missing keys: {', '.join(missing)}")
        return None
    name = obj["bench"]
    if not isinstance(name, str) or not NAME.match(name):
        problem(f"bench must be a name ([A-Za-z0-9._-]+), got {name!r}")
        return None
    if obj["unit"] not in UNITS:
        problem(f"unit must be one of {UNITS}, got {obj['unit']!r}")
        return name
    if not is_int(obj["n"]) or obj["n"] < 0:
        problem(f"n must be a non-negative integer, got {obj['n']!r}")
        return name
    for key in ("baseline_n", "rounds"):
        if key in obj and (not is_int(obj[key]) or obj[key] < 0):
            problem(f"{key} must be a non-negative integer, got {obj[key]!r}")
    check_spec_baseline(obj, problem)
    check_cpu(obj, problem)
    if obj.get("failed", False) is not False:
        why = [obj[k] for k in ("skipped", "baseline_skipped", "error") if k in obj]
        problem(f"benchmark failed ({'; '.join(map(str, why)) or 'no reason given'})")
    if "skipped" in obj:
        if not isinstance(obj["skipped"], str) or not obj["skipped"]:
            problem("skipped must be a non-empty reason")
        for key in ("p50", "p99", "baseline_p50", "ratio"):
            if obj[key] is not None and not is_number(obj[key]):
                problem(f"{key} must be a number or null, got {obj[key]!r}")
        return name
    check_measured(obj, problem)
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require", action="append", default=[], metavar="NAME",
                        help="a benchmark that must be present and measured, its baseline "
                             "too (repeatable)")
    args = parser.parse_args()

    problems = 0
    seen = {}
    measured = skipped = 0
    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        where = [f"line {lineno}"]

        def problem(msg):
            nonlocal problems
            problems += 1
            print(f"check_json: {': '.join(where)}: {msg}", file=sys.stderr)

        try:
            obj = json.loads(line, parse_constant=reject_constant)
        except ValueError as e:
            problem(f"not JSON: {e}")
            continue
        if isinstance(obj, dict) and isinstance(obj.get("bench"), str):
            where.append(obj["bench"])
        name = check_line(obj, problem)
        if name is None:
            continue
        if name in seen:
            problem(f"duplicate benchmark (first on line {seen[name][0]})")
        seen[name] = (lineno, "skipped" not in obj, obj.get("baseline_skipped"))
        if "skipped" in obj:
            skipped += 1
        else:
            measured += 1

    if not seen:
        problems += 1
        print("check_json: no benchmark lines on stdin", file=sys.stderr)
    for name in args.require:
        if name not in seen:
            problems += 1
            print(f"check_json: required benchmark {name} is missing", file=sys.stderr)
        elif not seen[name][1]:
            problems += 1
            print(f"check_json: required benchmark {name} was skipped", file=sys.stderr)
        elif seen[name][2] is not None:
            problems += 1
            print(f"check_json: required benchmark {name}'s baseline was skipped: "
                  f"{seen[name][2]}", file=sys.stderr)

    status = "OK" if problems == 0 else f"{problems} problem(s)"
    print(f"check_json: {measured + skipped} benchmark(s), {measured} measured, "
          f"{skipped} skipped: {status}")
    return 0 if problems == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
