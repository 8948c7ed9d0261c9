#!/usr/bin/env python3
"""virtio-console device throughput and latency with the bare-metal test guest.

The guest's driver loop runs in CPL3 (native speed even on kvm_pvm), so what is measured is
pier's device path: guest ring <-> pier <-> unix socket <-> this script. Prints, for N runs each,
min/median/max of: host->guest and guest->host throughput on 1 and 4 ports, 1-byte ping-pong
round-trip latency, and this machine's unix-socket loopback ceiling for the same transfer, with
the ratio pier/ceiling. QEMU cannot boot this guest image (it has no PVH note yet); the
side-by-side comparison with QEMU belongs to `pier bench` (see README).

  benches/console_throughput.py [--runs N] [--mib M] [--csv FILE]
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIER = os.path.join(ROOT, "build", "pier")
GUEST = os.path.join(ROOT, "build", "tests", "bare", "console_stream.elf")
CHUNK = 1 << 20


def connect(path, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            time.sleep(0.01)
    raise RuntimeError(f"cannot connect to {path}")


def pier_run(ports, total, mode):
    """Starts pier with `ports` named ports in `mode` (h2g|g2h|echo); returns (process, sockets)."""
    d = tempfile.mkdtemp(prefix="pier-bench-")
    args = [PIER, "run", "--kernel", GUEST, "--rng", "false", "--cmdline",
            f"ports={ports} bytes={total} verify=0 " + ("echo" if mode == "echo" else f"dir={mode}")]
    for p in range(1, ports + 1):
        args += ["--port", f"name=org.pier.bench{p},socket={d}/p{p}.sock"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    socks = [connect(f"{d}/p{p}.sock") for p in range(1, ports + 1)]
    return proc, socks


def move(socks, total, mode):
    """Moves `total` bytes per socket in `mode`; returns seconds."""
    payload = bytes(CHUNK)

    def send(s):
        left = total
        while left:
            n = s.send(payload[: min(CHUNK, left)])
            left -= n

    def recv(s):
        buf = bytearray(CHUNK)
        left = total
        while left:
            n = s.recv_into(buf, min(CHUNK, left))
            if n == 0:
                raise RuntimeError("connection closed early")
            left -= n

    work = send if mode == "h2g" else recv
    threads = [threading.Thread(target=work, args=(s,)) for s in socks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def pier_throughput(ports, total, mode):
    proc, socks = pier_run(ports, total, mode)
    secs = move(socks, total, mode)
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    if "PIER-TEST PASS" not in out:
        raise RuntimeError("guest did not pass:\n" + out[-2000:])
    return ports * total / secs / 1e6


def pier_latency(rounds):
    proc, socks = pier_run(1, rounds, "echo")
    s = socks[0]
    lat = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        s.sendall(b"x")
        if not s.recv(1):
            raise RuntimeError("closed")
        lat.append(time.perf_counter() - t0)
    proc.communicate(timeout=60)
    lat.sort()
    return lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


def ceiling(ports, total):
    """The same transfer between two ends of unix stream sockets on this machine."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(ports)]
    payload = bytes(CHUNK)

    def send(s):
        left = total
        while left:
            left -= s.send(payload[: min(CHUNK, left)])

    def recv(s):
        buf = bytearray(CHUNK)
        left = total
        while left:
            left -= s.recv_into(buf, min(CHUNK, left))

    threads = [threading.Thread(target=send, args=(a,)) for a, _ in pairs]
    threads += [threading.Thread(target=recv, args=(b,)) for _, b in pairs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ports * total / (time.perf_counter() - t0) / 1e6


def stats(xs):
    return min(xs), statistics.median(xs), max(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64, help="MiB per port per run")
    ap.add_argument("--csv")
    a = ap.parse_args()
    total = a.mib << 20
    rows = []
    for ports in (1, 4):
        ceil = [ceiling(ports, total) for _ in range(a.runs)]
        for mode, label in (("h2g", "host->guest"), ("g2h", "guest->host")):
            vals = [pier_throughput(ports, total, mode) for _ in range(a.runs)]
            rows.append((f"{label}, {ports} port(s), MB/s", stats(vals), stats(ceil)))
    lats = [pier_latency(2000) for _ in range(a.runs)]
    rows.append(("ping-pong 1 B p50, us", stats([l[0] for l in lats]), None))
    rows.append(("ping-pong 1 B p99, us", stats([l[1] for l in lats]), None))
    print(f"{'figure':34} {'pier min/median/max':>26} {'socket ceiling median':>22} {'ratio':>7}")
    for name, (lo, med, hi), c in rows:
        cm = f"{c[1]:.0f}" if c else "-"
        ratio = f"{med / c[1]:.2f}" if c else "-"
        print(f"{name:34} {lo:8.1f} {med:8.1f} {hi:8.1f} {cm:>22} {ratio:>7}")
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("figure,min,median,max,ceiling_median\n")
            for name, (lo, med, hi), c in rows:
                f.write(f"\"{name}\",{lo:.2f},{med:.2f},{hi:.2f},{c[1] if c else ''}\n")


if __name__ == "__main__":
    sys.exit(main())
