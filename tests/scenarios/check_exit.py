#!/usr/bin/env python3
"""Runs a command and checks its exit status and output, for tests of the runner itself.

    check_exit.py STATUS REGEX COMMAND...

Passes when COMMAND exits with STATUS and some line of its stdout or stderr matches REGEX
(re.search); otherwise prints what happened and exits 1.
"""
import re
import subprocess
import sys


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    status, pattern, cmd = int(sys.argv[1]), re.compile(sys.argv[2]), sys.argv[3:]
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = (run.stdout + run.stderr).splitlines()
    matched = any(pattern.search(line) for line in lines)
    if run.returncode == status and matched:
        return 0
    print('command: %s' % ' '.join(cmd))
    print('exit status %d (wanted %d); output %s /%s/:' %
          (run.returncode, status, 'matches' if matched else 'does not match', sys.argv[2]))
    print(run.stdout + run.stderr)
    return 1


if __name__ == '__main__':
    sys.exit(main())
