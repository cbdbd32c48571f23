#!/usr/bin/env python3
"""Prints the names of the scenarios in a directory (file names without .mbs), one a line,
sorted, for meson to register a test for each.

    list_scenarios.py DIR           every DIR/*.mbs
    list_scenarios.py --soft DIR    those that add a soft partition (`partition add NAME soft`,
                                    also under `async LABEL`): they have a kvm variant
"""
import glob
import os
import re
import sys

SOFT = re.compile(r'^[ \t]*(async[ \t]+\S+[ \t]+)?partition[ \t]+add[ \t]+\S+[ \t]+soft\b', re.M)


def main():
    args = sys.argv[1:]
    soft = args[:1] == ['--soft']
    if soft:
        args = args[1:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for path in sorted(glob.glob(os.path.join(args[0], '*.mbs'))):
        if soft:
            with open(path) as f:
                text = re.sub(r'#.*', '', f.read())
            if not SOFT.search(text):
                continue
        print(os.path.basename(path)[:-4])
    return 0


if __name__ == '__main__':
    sys.exit(main())
