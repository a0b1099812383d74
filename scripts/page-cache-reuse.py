#!/usr/bin/env python3
"""What writing 1 GiB into the page cache costs on this machine, by where its pages come from.

  python3 scripts/page-cache-reuse.py [DIR]      (DIR on the disk under test; default .)

On a VM whose balloon reports free pages to its host (virtio free page reporting), memory that
has been free for a couple of seconds goes back to the host, and the first write into it costs
far more than a write into pages freed a moment ago. A writer that grows the page cache pays
that per page; one that writes back and drops its pages behind it (vhdsync's image::Writeback)
recycles the same few megabytes. Rows:

  rm, write now       the pages of a 1 GiB file just deleted are reused at once
  rm, 5 s, write      the same after 5 s idle: the freed pages are gone to the host
  drop-behind         as vhdsync writes: writeback started every 2 MiB, pages 32 MiB behind
                      waited for and dropped, fdatasync at the end (after 5 s idle too)
"""
import ctypes
import os
import sys
import time

WRITE, WAIT_BEFORE, WAIT_AFTER = 2, 1, 4
libc = ctypes.CDLL(None, use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
piece = os.urandom(2 << 20)
pieces = 512  # 1 GiB


def write(path, drop_behind=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    started = time.time()
    lag = 16
    for i in range(pieces):
        os.pwrite(fd, piece, i * len(piece))
        if drop_behind:
            libc.sync_file_range(fd, i * len(piece), len(piece), WRITE)
            if i >= lag:
                at = (i - lag) * len(piece)
                libc.sync_file_range(fd, at, len(piece), WAIT_BEFORE | WRITE | WAIT_AFTER)
                os.posix_fadvise(fd, at, len(piece), os.POSIX_FADV_DONTNEED)
    if drop_behind:
        os.fdatasync(fd)
    os.close(fd)
    return time.time() - started


def main():
    path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "page-cache-reuse.tmp")
    try:
        for _ in range(3):
            # Untimed: a file whose 1 GiB is all in the page cache, for the next row to free.
            write(path)
            os.unlink(path)
            print(f"rm, write now     {write(path):5.2f} s")
            os.unlink(path)
            time.sleep(5)
            print(f"rm, 5 s, write    {write(path):5.2f} s")
            os.unlink(path)
            time.sleep(5)
            print(f"drop-behind       {write(path, drop_behind=True):5.2f} s (durable)")
            os.unlink(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


main()
