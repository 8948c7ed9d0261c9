#!/usr/bin/env python3
"""virtio-console device throughput and latency with the bare-metal test guest.

The guest's driver loop runs in CPL3 (native speed even on kvm_pvm), so what is measured is
pier's device path: guest ring <-> pier <-> unix socket <-> this script. Prints, for N runs each,
min/median/max of: host->guest and guest->host throughput on 1 and 4 ports, 1-byte ping-pong
round-trip latency, and this machine's unix-socket loopback ceiling for the same transfer, with
the ratio pier/ceiling. QEMU cannot boot this guest image (it has no PVH note yet); the
side-by-side comparison with QEMU belongs to `pier bench` (see README).

  benches/console_throughput.py [--runs N] [--mib M] [--csv FILE] [--baseline DIR]

--baseline DIR: also measure DIR/pier with DIR/console_stream.elf (e.g. a build of an older
commit), interleaved run by run with the current build, and print both side by side.
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


def pier_run(ports, total, mode, build=(PIER, GUEST)):
    """Starts pier with `ports` named ports in `mode` (h2g|g2h|echo); returns (process, sockets)."""
    d = tempfile.mkdtemp(prefix="pier-bench-")
    args = [build[0], "run", "--kernel", build[1], "--rng", "false", "--cmdline",
            f"ports={ports} bytes={total} verify=0 " + ("echo" if mode == "echo" else f"dir={mode}")]
    for p in range(1, ports + 1):
        args += ["--port", f"name=org.pier.bench{p},socket={d}/p{p}.sock"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    socks = [connect(f"{d}/p{p}.sock") for p in range(1, ports + 1)]
    # Time the data path, not the boot: the guest prints READY once its ports are set up (its
    # boot messages go through the serial port, slow on kvm_pvm).
    proc.head = b""
    while b"PIER-TEST READY" not in proc.head:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("pier exited before the guest was ready:\n" + proc.head.decode(errors="replace"))
        proc.head += line
    return proc, socks


def move(socks, total, mode):
    """Moves `total` bytes per socket in `mode`; returns seconds."""
    payload = memoryview(bytes(CHUNK))  # slices of it are not copies

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


def pier_throughput(ports, total, mode, build=(PIER, GUEST)):
    proc, socks = pier_run(ports, total, mode, build)
    secs = move(socks, total, mode)
    out = (proc.head + proc.communicate(timeout=300)[0]).decode(errors="replace")
    if "PIER-TEST PASS" not in out:
        raise RuntimeError("guest did not pass:\n" + out[-2000:])
    return ports * total / secs / 1e6


def pier_latency(rounds, build=(PIER, GUEST)):
    proc, socks = pier_run(1, rounds, "echo", build)
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
    payload = memoryview(bytes(CHUNK))  # slices of it are not copies

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
    ap.add_argument("--baseline", help="directory with an older pier and console_stream.elf")
    a = ap.parse_args()
    total = a.mib << 20
    builds = [("pier", (PIER, GUEST))]
    if a.baseline:
        builds.append(("baseline", (os.path.join(a.baseline, "pier"),
                                    os.path.join(a.baseline, "console_stream.elf"))))
    rows = []  # (figure, {build: (min, median, max)}, ceiling stats or None)
    for ports in (1, 4):
        ceil = [ceiling(ports, total) for _ in range(a.runs)]
        for mode, label in (("h2g", "host->guest"), ("g2h", "guest->host")):
            vals = {name: [] for name, _ in builds}
            for _ in range(a.runs):  # interleaved, so load changes hit every build alike
                for name, b in builds:
                    vals[name].append(pier_throughput(ports, total, mode, b))
            rows.append((f"{label}, {ports} port(s), MB/s", {k: stats(v) for k, v in vals.items()},
                         stats(ceil)))
    lats = {name: [] for name, _ in builds}
    for _ in range(a.runs):
        for name, b in builds:
            lats[name].append(pier_latency(2000, b))
    rows.append(("ping-pong 1 B p50, us", {k: stats([l[0] for l in v]) for k, v in lats.items()}, None))
    rows.append(("ping-pong 1 B p99, us", {k: stats([l[1] for l in v]) for k, v in lats.items()}, None))
    head = f"{'figure':30}"
    for name, _ in builds:
        head += f" {name + ' min/median/max':>26} {'ratio':>6}"
    print(head + f" {'socket ceiling median':>22}")
    for name, per, c in rows:
        line = f"{name:30}"
        for b, _ in builds:
            lo, med, hi = per[b]
            ratio = f"{med / c[1]:.2f}" if c else "-"
            line += f" {lo:8.1f} {med:8.1f} {hi:8.1f} {ratio:>6}"
        cm = f"{c[1]:.0f}" if c else "-"
        print(line + f" {cm:>22}")
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("figure,build,min,median,max,ceiling_median\n")
            for name, per, c in rows:
                for b, (lo, med, hi) in per.items():
                    f.write(f"\"{name}\",{b},{lo:.2f},{med:.2f},{hi:.2f},{c[1] if c else ''}\n")


if __name__ == "__main__":
    sys.exit(main())
