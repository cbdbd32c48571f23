#!/usr/bin/env python3
"""Runs a libFuzzer target for a bounded time and reports what it reached, as one test.

    run_fuzz.py FUZZER SECONDS DICT CORPUS...

New inputs go to a scratch directory, never into a CORPUS (seed directories of the tree, read
only: the fuzzer's corpus, and the scenarios themselves).
MEMBACKING_FUZZ_SECONDS in the environment overrides SECONDS. Prints one summary line,
"fuzz: N executions in S s (R/s), ...", and exits 0; on a finding, prints libFuzzer's report
and the input that broke the target, and exits 1.
"""
import os
import re
import subprocess
import sys
import tempfile


def stat(output, name):
    m = re.search(r'^stat::%s:\s*(\d+)' % name, output, re.M)
    return int(m.group(1)) if m else None


def show_findings(scratch):
    for name in sorted(os.listdir(scratch)):
        if name.startswith(('crash-', 'leak-', 'timeout-', 'oom-', 'slow-unit-')):
            with open(os.path.join(scratch, name), 'rb') as f:
                data = f.read()
            print('--- %s (%d bytes):\n%r' % (name, len(data), data[:2000]))


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    fuzzer, seconds, dictionary, corpora = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    seconds = int(os.environ.get('MEMBACKING_FUZZ_SECONDS', seconds))
    with tempfile.TemporaryDirectory(prefix='mb-fuzz-') as scratch:
        new = os.path.join(scratch, 'new')
        os.mkdir(new)
        cmd = [fuzzer, '-max_total_time=%d' % seconds, '-print_final_stats=1', '-timeout=10',
               '-rss_limit_mb=2048', '-max_len=4096', '-dict=' + dictionary,
               '-artifact_prefix=' + scratch + '/', new] + corpora
        run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors='replace')
        out = run.stdout
        execs, rate = stat(out, 'number_of_executed_units'), stat(out, 'average_exec_per_sec')
        if run.returncode != 0 or execs is None:
            print('command: %s' % ' '.join(cmd))
            print(out[-20000:])
            show_findings(scratch)
            print('fuzz: FAILED (exit status %d)' % run.returncode)
            return 1
        print('fuzz: %d executions in %d s (%d/s), %d new inputs, peak RSS %d MB'
              % (execs, seconds, rate or 0, stat(out, 'new_units_added') or 0,
                 stat(out, 'peak_rss_mb') or 0))
    return 0


if __name__ == '__main__':
    sys.exit(main())
