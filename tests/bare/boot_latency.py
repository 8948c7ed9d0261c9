#!/usr/bin/env python3
"""Wall time from exec of `pier run` to the first byte of guest serial output and to exit.

Usage: tests/bare/boot_latency.py [--pier build/pier] [--guest build/tests/bare/first_byte.elf]
                                  [--runs 20] [-- extra pier args]
With first_byte.elf (its first instruction writes to COM1) the first-byte time is pier's
exec -> first guest instruction plus one I/O exit.
"""
import argparse
import os
import select
import statistics
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
ap = argparse.ArgumentParser()
ap.add_argument("--pier", default=os.path.join(root, "build", "pier"))
ap.add_argument("--guest", default=os.path.join(root, "build", "tests", "bare", "first_byte.elf"))
ap.add_argument("--runs", type=int, default=20)
ap.add_argument("extra", nargs="*")
a = ap.parse_args()

first, total = [], []
for _ in range(a.runs):
    t0 = time.perf_counter()
    p = subprocess.Popen([a.pier, "run", "--kernel", a.guest, "--memory", "64M", *a.extra],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t_first = None
    out = b""
    while True:
        r, _, _ = select.select([p.stdout], [], [], 30)
        if not r:
            p.kill()
            sys.exit("timeout")
        chunk = os.read(p.stdout.fileno(), 4096)
        if chunk and t_first is None:
            t_first = time.perf_counter() - t0
        out += chunk
        if not chunk:
            break
    rc = p.wait()
    total.append(time.perf_counter() - t0)
    if rc != 0 or b"PIER-TEST PASS" not in out:
        sys.exit(f"run failed: rc={rc} out={out!r} err={p.stderr.read()!r}")
    first.append(t_first)


def ms(v):
    return f"{v * 1e3:7.2f}"


print(f"{os.path.basename(a.guest)}, {a.runs} runs        min  median     max  (ms)")
print(f"exec -> first serial byte {ms(min(first))} {ms(statistics.median(first))} {ms(max(first))}")
print(f"exec -> exit              {ms(min(total))} {ms(statistics.median(total))} {ms(max(total))}")
