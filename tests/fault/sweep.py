#!/usr/bin/env python3
"""The fault-injection sweep: every scenario, under every injected failure, in both layouts.

    sweep.py --replay PATH/membacking-replay [--scenarios DIR] [--layouts single,spread]
             [--max-runs N] [--seed S] [--timeout SECONDS] [--jobs N] [--deadline SECONDS]
             [--kinds mmap,alloc,...] [--only GLOB] [--skip GLOB] [--list]

For each tests/scenarios/*.mbs that does not `require kvm`, and each layout, it replays the file
once with MB_FI_COUNT=1 to learn how many calls of each kind (mmap, munmap, mprotect,
memfd_create, ftruncate, kvm_set_region, alloc: mem/fault_inject.h) the run makes; then once
per n with MB_FI=KIND:n, which fails the n-th call of that kind, under
`membacking-replay --fault-check` (tests/replay/replay_fault.c): no crash (the sanitizers'
reports abort the run), no hang (a time bound per run), the failure reported by an operation,
every consumer agreeing with the manager's visible map, and no fd, mapping or memory left.

When there are more runs than --max-runs, a deterministic sample (seeded by --seed) is run:
each scenario, layout and kind keeps all its n up to an equal share of the budget, and a share
that is smaller than its n keeps the first and the last n and a random choice of the others.
It prints "N runs of M possible". --deadline stops launching runs after that many seconds (a
safety net for CI; it says so when it fires).

Each run also sets MB_FI_TRACE=1: a failure found is printed with where the failure was
injected (the library's return addresses, named with addr2line) and the command line that
reproduces it. Failures listed in KNOWN below (each naming a reported library bug) are counted
apart and do not fail the sweep.
Exit status: 0, 1 when an unknown failure was found, 77 when the build injects no faults.
"""
import argparse
import collections
import concurrent.futures
import fnmatch
import glob
import os
import random
import re
import shlex
import subprocess
import sys
import time

# Failures that are library bugs already reported (actors/, runtime/, mem/, backends/ belong
# to others): (bug, kind or None, regex searched in the run's verdict, where the failure was
# injected and its output). A failure matching an entry is "known": counted and shown, not a
# failure of the sweep. Remove an entry once its bug is fixed.
KNOWN = []

COUNT_LINE = re.compile(r'^mb_fi: (\w+) calls=(\d+) injected=(\d+)$', re.M)
TRACE_LINE = re.compile(r'^mb_fi: injected \w+ call \d+ at: (.*)$', re.M)
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
RESULT_LINE = re.compile(r'^(PASS|FAIL|SKIP) (.*)$', re.M)
SANITIZER_LINE = re.compile(r'^(SUMMARY: \w+Sanitizer: .*|.*runtime error: .*|==\d+==ERROR: .*)$',
                            re.M)


def requires_kvm(path):
    with open(path) as f:
        text = re.sub(r'#.*', '', f.read())
    return re.search(r'^[ \t]*require[ \t]+kvm\b', text, re.M) is not None


def command(replay, layout, path):
    return [replay, '--layout=' + layout, '--fault-check', path]


def reproducer(replay, layout, path, spec):
    env = 'MB_FI=%s MB_FI_TRACE=1 ASAN_OPTIONS=%s' % (spec, os.environ.get('ASAN_OPTIONS', ''))
    return env + ' ' + ' '.join(shlex.quote(a) for a in command(replay, layout, path))


def run(replay, layout, path, env_extra, timeout):
    env = dict(os.environ)
    env.pop('MB_FI', None)
    env.update(env_extra)
    start = time.monotonic()
    try:
        for attempt in range(3):
            try:
                p = subprocess.run(command(replay, layout, path), env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   errors='replace', timeout=timeout)
                break
            except OSError as e:  # the program is being rebuilt: a moment later it is back
                if attempt == 2:
                    return -1, '', 'cannot run %s: %s' % (replay, e), 0.0
                time.sleep(2)
        return p.returncode, p.stdout, p.stderr, time.monotonic() - start
    except subprocess.TimeoutExpired as e:
        def text(b):
            return b.decode(errors='replace') if isinstance(b, bytes) else (b or '')
        return None, text(e.stdout), text(e.stderr), time.monotonic() - start


def count_calls(replay, layout, path, timeout):
    """The calls of each kind one run makes, or (None, why) when the plain run fails."""
    rc, out, err, _ = run(replay, layout, path, {'MB_FI_COUNT': '1'}, timeout)
    if rc == 77 and 'injects no faults' in err:
        return None, 'skip'
    if rc != 0:
        return None, 'the run without an injected failure fails (exit %s): %s' % (
            rc, (out + err).strip()[-2000:])
    return {k: int(c) for k, c, _ in COUNT_LINE.findall(err)}, None


def plan(groups, max_runs, seed):
    """groups: {(path, layout, kind): calls}. Returns the runs: [(path, layout, kind, n)]."""
    total = sum(groups.values())
    if total <= max_runs:
        return [(p, l, k, n) for (p, l, k), c in sorted(groups.items())
                for n in range(1, c + 1)]
    # An equal share for each group, given back by the groups that need less (water-filling).
    sizes = sorted(groups.values())
    left, share = max_runs, 0
    for i, c in enumerate(sizes):
        each = left // (len(sizes) - i)
        if c <= each:
            left -= c
        else:
            share = each
            break
    else:
        share = max(sizes)
    rng = random.Random(seed)
    runs = []
    for (p, l, k), c in sorted(groups.items()):
        if c <= share:
            ns = range(1, c + 1)
        elif share <= 2:
            ns = [1, c][:share]
        else:
            ns = sorted({1, c} | set(rng.sample(range(2, c), share - 2)))
        runs += [(p, l, k, n) for n in ns]
    return runs


def classify(rc, out, err):
    """(verdict, detail): verdict is ok, not-reached, fail, crash or hang."""
    results = RESULT_LINE.findall(out)
    if rc is None:
        return 'hang', 'no result within the time bound'
    if rc == 0 and results and results[0][0] == 'PASS':
        detail = results[0][1]
        return ('not-reached' if 'nothing injected' in detail else 'ok'), detail
    if rc == 1 and results and results[0][0] == 'FAIL':
        return 'fail', results[0][1]
    sanitizer = SANITIZER_LINE.findall(err)
    what = sanitizer[0] if sanitizer else 'exit status %d' % rc
    stack = [line.strip() for line in err.splitlines() if re.match(r'\s+#\d+ ', line)][:8]
    return 'crash', what + ('\n      ' + '\n      '.join(stack) if stack else '')


def injected_at(err, frames=10):
    """Where the failure was injected (MB_FI_TRACE=1), as 'function (file:line) < ...'."""
    m = TRACE_LINE.search(err)
    if not m:
        return ''
    pcs = []
    for item in m.group(1).split():
        obj, _, off = item.rpartition('+')
        if obj and off.startswith('0x'):
            pcs.append((obj, int(off, 16) - 1))  # a return address: the call is just before
    names = {}  # (object, offset) -> ['function (file:line)', ...], inlined calls first
    for obj in dict.fromkeys(o for o, _ in pcs):
        offs = [off for o, off in pcs if o == obj]
        try:
            out = subprocess.run(['addr2line', '-a', '-f', '-i', '-e', obj] +
                                 ['%#x' % o for o in offs], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ''
        for off, block in zip(offs, re.split(r'^0x[0-9a-f]+\n', out, flags=re.M)[1:]):
            lines = block.strip('\n').split('\n')
            for fn, where in zip(lines[0::2], lines[1::2]):
                path, _, line = re.sub(r' \(discriminator \d+\)', '', where).rpartition(':')
                if fn == '??':
                    continue
                if path.startswith('/'):
                    path = os.path.relpath(os.path.normpath(path), ROOT)
                names.setdefault((obj, off), []).append('%s (%s:%s)' % (fn, path, line))
    chain = [n for pc in pcs for n in names.get(pc, [os.path.basename(pc[0])])]
    chain = [c for c in chain if not c.startswith(('mb__fi_fail', 'print_trace', '__libc',
                                                   '_start', 'start_thread', 'clone'))]
    return ' < '.join(chain[:frames])


def known_bug(kind, text):
    for bug, k, pattern in KNOWN:
        if (k is None or k == kind) and re.search(pattern, text, re.S):
            return bug
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--replay', required=True)
    ap.add_argument('--scenarios',
                    default=os.path.join(os.path.dirname(__file__), '..', 'scenarios'))
    ap.add_argument('--layouts', default='single,spread')
    ap.add_argument('--max-runs', type=int, default=3000)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--timeout', type=float, default=20.0)
    ap.add_argument('--jobs', type=int, default=os.cpu_count() or 2)
    ap.add_argument('--deadline', type=float, default=0, help='seconds; 0: none')
    ap.add_argument('--kinds', default='', help='comma-separated; default: every kind')
    ap.add_argument('--only', default='', help='scenario file name glob')
    ap.add_argument('--skip', default='', help='scenario file name glob')
    ap.add_argument('--list', action='store_true', help='print the planned runs and stop')
    a = ap.parse_args()
    started = time.monotonic()
    layouts = a.layouts.split(',')
    kinds = set(a.kinds.split(',')) if a.kinds else None

    files = sorted(glob.glob(os.path.join(os.path.normpath(a.scenarios), '*.mbs')))
    if a.only:
        files = [f for f in files if fnmatch.fnmatch(os.path.basename(f), a.only)]
    if a.skip:
        files = [f for f in files if not fnmatch.fnmatch(os.path.basename(f), a.skip)]
    skipped = [f for f in files if requires_kvm(f)]
    files = [f for f in files if f not in skipped]
    for f in skipped:
        print('skip %s: require kvm' % os.path.basename(f))

    groups, problems = {}, []
    for f in files:
        for layout in layouts:
            calls, why = count_calls(a.replay, layout, f, a.timeout * 5)
            if why == 'skip':
                print('the replayer is built without fault injection (-Dfault_injection=true): '
                      'skipped')
                return 77
            if why:
                problems.append(('baseline', f, layout, '-', 0, why, ''))
                continue
            for kind, c in calls.items():
                if c and (kinds is None or kind in kinds):
                    groups[(f, layout, kind)] = c
    possible = sum(groups.values())
    runs = plan(groups, a.max_runs, a.seed)
    print('%d runs of %d possible (%d scenarios x %d layouts; --max-runs %d, --seed %d)' %
          (len(runs), possible, len(files), len(layouts), a.max_runs, a.seed))
    if a.list:
        for p, l, k, n in runs:
            print('  %s %s %s:%d' % (os.path.basename(p), l, k, n))
        return 0
    sys.stdout.flush()

    stats = collections.defaultdict(collections.Counter)  # kind -> verdict counts
    reports = collections.Counter()                        # how the failure was reported
    known = collections.Counter()
    done_runs = 0
    stopped = False
    last_progress = time.monotonic()

    def one(job):
        p, l, k, n = job
        if a.deadline and time.monotonic() - started > a.deadline:
            return job, None
        return job, run(a.replay, l, p, {'MB_FI': '%s:%d' % (k, n), 'MB_FI_TRACE': '1'},
                        a.timeout)

    with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
        for (p, l, k, n), r in pool.map(one, runs):
            if r is None:
                stopped = True
                continue
            done_runs += 1
            if time.monotonic() - last_progress >= 60:
                last_progress = time.monotonic()
                print('  ... %d of %d runs, %d failures, %.0f s' % (
                    done_runs, len(runs), len(problems), last_progress - started), flush=True)
            rc, out, err, _ = r
            verdict, detail = classify(rc, out, err)
            if verdict in ('ok', 'not-reached'):
                stats[k][verdict] += 1
                m = re.search(r'reported at line \d+ .*?: ([^;]+?) \(-?\d+\);', detail)
                reports[m.group(1) if m else 'setting up' if "'setting up" in detail
                        else 'teardown only' if 'during the teardown' in detail
                        else 'to the runner' if 'reported to the runner' in detail
                        else 'nothing injected' if verdict == 'not-reached' else 'other'] += 1
                continue
            spec = '%s:%d' % (k, n)
            where = injected_at(err)
            if where:
                detail += '\n  injected at: ' + where
            bug = known_bug(k, detail + '\n' + out + err)
            if bug:
                stats[k]['known'] += 1
                known[bug] += 1
                continue
            stats[k][verdict] += 1
            problems.append((verdict, p, l, k, n, detail, reproducer(a.replay, l, p, spec)))

    elapsed = time.monotonic() - started
    print('\nruns per kind (ok: checked and passed; not-reached: the run made fewer calls):')
    for k in sorted(stats):
        c = stats[k]
        print('  %-15s %5d runs: %s' % (k, sum(c.values()),
                                         ', '.join('%s %d' % (v, c[v]) for v in sorted(c))))
    print('how the injected failure was reported: ' +
          ', '.join('%s %d' % (r, c) for r, c in reports.most_common()))
    if known:
        print('known failures (reported library bugs):')
        for bug, c in known.most_common():
            print('  %4d  %s' % (c, bug))
    if stopped:
        print('deadline of %.0f s reached: %d of the %d planned runs were not started' %
              (a.deadline, len(runs) - done_runs, len(runs)))
    print('%d runs of %d possible in %.0f s; %d failures' % (done_runs, possible, elapsed,
                                                            len(problems)))
    for verdict, p, l, k, n, detail, repro in problems:
        print('\n%s: %s %s %s:%d\n  %s' % (verdict.upper(), os.path.basename(p), l, k, n,
                                           detail.replace('\n', '\n  ')))
        if repro:
            print('  reproduce: ' + repro)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
