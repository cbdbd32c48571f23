#!/usr/bin/env python3
"""extract-vmlinux.py BZIMAGE OUT: write the uncompressed ELF vmlinux inside a bzImage (zstd, xz or gzip),
so QEMU can boot it through the PVH entry point (no firmware real-mode setup, no in-guest decompression)."""
import subprocess, sys
data = open(sys.argv[1], 'rb').read()
for magic, cmd in ((b'\x28\xb5\x2f\xfd', ['zstd', '-dcq']), (b'\xfd7zXZ\x00', ['xz', '-dcq']), (b'\x1f\x8b\x08', ['gzip', '-dcq'])):
    start = 0
    while (i := data.find(magic, start)) >= 0:
        out = subprocess.run(cmd, input=data[i:], capture_output=True).stdout  # trailing bytes make it complain; the output is whole
        if out[:4] == b'\x7fELF':
            open(sys.argv[2], 'wb').write(out)
            sys.exit(0)
        start = i + 1
sys.exit("no compressed ELF found in " + sys.argv[1])
