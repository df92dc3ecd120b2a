"""A child for the fuzzer's runner tests: ``python -m fuzz_hog cpu|sleep|memory|ok``."""

from __future__ import annotations

import sys
import time

what = sys.argv[1]
if what == "cpu":
    while True:
        pass
elif what == "sleep":
    time.sleep(60)
elif what == "memory":
    hog = bytearray(3 * 2**30)  # more than the runner's 2 GiB of address space
print("ok")
