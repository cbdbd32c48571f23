#!/usr/bin/env python3
"""Runs a command with its address space limited (RLIMIT_AS), for scenarios that expect what
the host refuses (error:resource; tests/scenarios/limits/).

    run_limited.py GIB COMMAND...

Exits with the command's status. Sanitizer builds reserve terabytes of shadow memory at start:
they cannot run under such a limit, and the tests that use this are not registered there.
"""
import os
import resource
import sys


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    limit = int(sys.argv[1]) << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == '__main__':
    sys.exit(main())
