#!/usr/bin/env python3
"""extract-vmlinux.py BZIMAGE OUT: write the uncompressed ELF kernel inside a bzImage (zstd, xz
or gzip), so that QEMU can boot it through PVH: no firmware, no decompression in the guest."""
import subprocess
import sys

with open(sys.argv[1], 'rb') as f:
    data = f.read()
for magic, cmd in ((b'\x28\xb5\x2f\xfd', ['zstd', '-dcq']), (b'\xfd7zXZ\x00', ['xz', '-dcq']),
                   (b'\x1f\x8b\x08', ['gzip', '-dcq'])):
    start = 0
    while (i := data.find(magic, start)) >= 0:
        # The bytes after the stream make the decompressor complain; its output is whole.
        out = subprocess.run(cmd, input=data[i:], capture_output=True).stdout
        if out[:4] == b'\x7fELF':
            with open(sys.argv[2], 'wb') as f:
                f.write(out)
            sys.exit(0)
        start = i + 1
sys.exit('no compressed ELF found in ' + sys.argv[1])
