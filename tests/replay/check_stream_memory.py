#!/usr/bin/env python3
"""The replayer streams its file: the memory a run takes does not grow with the file's length.

    check_stream_memory.py --replay=PATH [--lines=N] [--limit-mb=M] [--growth-mb=G]
                           [--layout=single|spread]

Writes two files of read lines through an eager mapper (gen_accesses.py): N lines and N/10,
replays each (--peak-memory: the replayer reads its own VmHWM at the end), and checks that
both pass, that the long one's peak resident set is under M MiB, and that it is at most G MiB
above the short one's. It prints both peaks. Under AddressSanitizer the freed-memory quarantine
(256 MiB by default) would grow with the file as a heap that keeps nothing does not; the test
keeps it small. No timing is checked.
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_accesses  # noqa: E402


def parse(argv):
    opts = {'replay': None, 'lines': 300000, 'limit-mb': 64, 'growth-mb': 8, 'layout': 'single'}
    for a in argv:
        key, _, value = a[2:].partition('=')
        if not a.startswith('--') or key not in opts or not value:
            raise SystemExit('check_stream_memory.py: bad argument %r\n%s' % (a, __doc__))
        opts[key] = value if key in ('replay', 'layout') else int(value)
    if not opts['replay']:
        raise SystemExit(__doc__)
    return opts


PEAK = re.compile(r'^membacking-replay: peak resident set (\d+) KiB$', re.M)


def replay_peak(replay, layout, path):
    """Run the replayer on path; its exit status, output and peak RSS in KiB (None: not said).
    (Not the child's rusage: its maxrss counts this Python's pages until the exec.)"""
    env = dict(os.environ)
    env['ASAN_OPTIONS'] = env.get('ASAN_OPTIONS', '') + ':quarantine_size_mb=4'
    run = subprocess.run([replay, '--layout=' + layout, '--peak-memory', path],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    m = PEAK.search(run.stdout)
    return run.returncode, run.stdout, int(m.group(1)) if m else None


def run(opts, tmp, lines):
    path = os.path.join(tmp, 'reads%d.mbs' % lines)
    with open(path, 'w') as f:
        gen_accesses.write(f, {'lines': lines, 'kind': 'read', 'mapper': 'eager'})
    rc, output, peak = replay_peak(opts['replay'], opts['layout'], path)
    os.unlink(path)
    if rc != 0 or 'PASS ' not in output or peak is None:
        print('%d lines: exit status %d:\n%s' % (lines, rc, output))
        return None
    print('%d read lines (%s): peak RSS %.1f MiB' % (lines, opts['layout'], peak / 1024.0))
    return peak


def main():
    opts = parse(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix='mb-stream-') as tmp:
        short = run(opts, tmp, max(opts['lines'] // 10, 1))
        long = run(opts, tmp, opts['lines'])
    if short is None or long is None:
        return 1
    ok = True
    if long > opts['limit-mb'] * 1024:
        print('FAIL: peak RSS %.1f MiB, over the %d MiB bound' % (long / 1024.0, opts['limit-mb']))
        ok = False
    if long - short > opts['growth-mb'] * 1024:
        print('FAIL: peak RSS grew by %.1f MiB with 10x the lines (at most %d MiB)'
              % ((long - short) / 1024.0, opts['growth-mb']))
        ok = False
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
