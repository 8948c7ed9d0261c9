#!/usr/bin/env python3
"""pier bench: host<->guest virtio-console throughput and latency, side by side with QEMU.

Run through `pier bench [options]` (vmm/main.cpp execs this script with --pier <itself>).

The bare guest (tests/bare/console_stream.c, a PVH ELF) runs its driver loop in CPL3, at native
speed even on kvm_pvm, so what is measured is the VMM's device path: guest ring <-> VMM <-> unix
socket <-> this script. The same image boots under QEMU (-kernel, virtio-serial-pci +
virtserialport on unix-socket chardevs). Every point boots a fresh guest and is run N times;
the table shows min/median/max and the ratio of medians to pier.

Points: guest->host throughput for guest write sizes 1 B .. 32 KiB, host->guest for host write
sizes 4 KiB .. 1 MiB, 1/2/4/8 ports in parallel both ways, 1-byte and 4 KiB ping-pong round
trips (p50/p99), boot time (exec -> the guest's READY line on the serial port), and the VMM's
host CPU time per GiB moved (utime+stime of the VMM process during the transfers).
"""
import argparse, csv, math, os, shutil, socket, statistics, subprocess, sys, tempfile, threading
import time

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT_NAME = "org.pier.bench{}"


def num(v):
    """Three significant digits for small values, one decimal for the rest."""
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def human(n):
    for unit, f in (("MiB", MiB), ("KiB", KiB)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"



def round_trips(sock, size, rounds):
    """Sends `size` bytes and waits for `size` back, `rounds` times; the seconds of each."""
    lat = []
    msg, buf = bytes(size), bytearray(size)
    for _ in range(rounds):
        t0 = time.perf_counter()
        sock.sendall(msg)
        got = 0
        while got < size:
            n = sock.recv_into(memoryview(buf)[got:])
            if n == 0:
                raise BenchError("connection closed early")
            got += n
        lat.append(time.perf_counter() - t0)
    return lat

class BenchError(Exception):
    pass


def connect(path, proc, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise BenchError(f"VMM exited ({proc.returncode}) before {path} accepted")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            time.sleep(0.005)
    raise BenchError(f"cannot connect to {path}")


def proc_cpu_seconds(pid):
    """Host CPU seconds the VMM process (all threads) spent outside the guest so far: utime +
    stime - guest_time (/proc/PID/stat fields 14, 15, 43; utime includes the time vCPUs ran
    guest code, which the guest's polling loop keeps at one CPU). None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12]) - int(fields[40])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


class Guest:
    """One booted guest: the VMM process, its serial output (read by a thread), port sockets."""

    def __init__(self, system, cmdline, ports, tmp):
        self.system, self.tmp = system, tmp
        self.lines, self.ready = [], threading.Event()
        self.ready_at = None
        paths = [os.path.join(tmp, f"p{p}.sock") for p in range(1, ports + 1)]
        argv = system.argv(cmdline, paths)
        self.t_exec = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.socks = [connect(p, self.proc) for p in paths]
        except BenchError:
            self.kill()
            raise BenchError(self.failure("no port socket"))

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append((time.perf_counter(), line))
            if "PIER-TEST READY" in line and not self.ready.is_set():
                self.ready_at = time.perf_counter()
                self.ready.set()

    def wait_ready(self, timeout):
        if not self.ready.wait(timeout):
            self.kill()
            raise BenchError(self.failure(f"no READY line within {timeout:.0f} s"))
        return self.ready_at - self.t_exec

    def line_value(self, prefix):
        for _, line in self.lines:
            if line.startswith(prefix):
                return line
        return None

    def finish(self, timeout=120):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(self.failure("guest did not finish"))
        self.reader.join(10)  # until the reader thread has every line (EOF on the pipe)
        for s in self.socks:
            s.close()
        if not any("PIER-TEST PASS" in l for _, l in self.lines):
            raise BenchError(self.failure(f"guest did not pass (exit {self.proc.returncode})"))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def failure(self, what):
        tail = "\n".join(l for _, l in self.lines[-15:])
        return f"{self.system.label}: {what}\n{tail}"


class Pier:
    def __init__(self, pier, guest):
        self.pier, self.guest, self.label, self.engine = pier, guest, "pier", "KVM"

    def linux_argv(self, ctl, paths):
        a = [self.pier, "run", "--rng", "false", "--memory", "1G",
             "--port", f"name=org.pier.bench.ctl,socket={ctl}"]
        for i, p in enumerate(paths, 1):
            a += ["--port", f"name={PORT_NAME.format(i)},socket={p}"]
        return a + ["--", f'eval "$(echo {linux_b64()}|base64 -d)"']

    def argv(self, cmdline, paths):
        a = [self.pier, "run", "--kernel", self.guest, "--rng", "false", "--memory", "256M",
             "--cmdline", cmdline]
        for i, p in enumerate(paths, 1):
            a += ["--port", f"name={PORT_NAME.format(i)},socket={p}"]
        return a


class Qemu:
    def __init__(self, binary, guest, accel, pier_binary=""):
        self.binary, self.guest, self.accel = binary, guest, accel
        self.pier_binary = pier_binary
        self.label = "qemu" if accel == "kvm" else "qemu-tcg"
        self.engine = "KVM" if accel == "kvm" else "TCG (no KVM)"

    def linux_argv(self, ctl, paths):
        d = os.path.join(os.path.dirname(os.path.abspath(self.pier_binary)), "guest")
        a = [self.binary, "-machine", f"pc,accel={self.accel}", "-m", "1G", "-nodefaults",
             "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
             "-cpu", "kvm64,pni=off" if self.accel == "kvm" else "max",
             "-kernel", os.path.join(d, "vmlinuz"), "-initrd", os.path.join(d, "initramfs.cpio"),
             "-append", f"console=ttyS0 reboot=k panic=-1 pier.cmd={linux_b64()}",
             "-device", f"virtio-serial-pci,max_ports={len(paths) + 2}",
             "-chardev", f"socket,id=ctl,path={ctl},server=on,wait=off",
             "-device", "virtserialport,chardev=ctl,name=org.pier.bench.ctl"]
        for i, p in enumerate(paths, 1):
            a += ["-chardev", f"socket,id=p{i},path={p},server=on,wait=off",
                  "-device", f"virtserialport,chardev=p{i},name={PORT_NAME.format(i)}"]
        return a

    def argv(self, cmdline, paths):
        a = [self.binary, "-machine", f"pc,accel={self.accel}", "-m", "256M", "-nodefaults",
             "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
             # -cpu host makes QEMU abort on kvm_pvm (it cannot set MSR 0x10a); kvm64 boots.
             "-cpu", "kvm64,pni=off" if self.accel == "kvm" else "max",
             "-kernel", self.guest, "-append", cmdline,
             "-device", f"virtio-serial-pci,disable-legacy=on,max_ports={len(paths) + 1}",
             "-chardev", "null,id=con0", "-device", "virtconsole,chardev=con0"]
        for i, p in enumerate(paths, 1):
            a += ["-chardev", f"socket,id=p{i},path={p},server=on,wait=off",
                  "-device", f"virtserialport,chardev=p{i},name={PORT_NAME.format(i)}"]
        return a


# ---- --guest linux: the stock Debian guest (build/guest), one boot per system -------------------
# The guest half is this busybox script, run by the image's /init (pier.cmd= / `--`): it serves
# commands from the control port and uses dd/head/cat on the named ports, so the numbers include
# the guest kernel's virtio_console driver and syscalls (emulated, hence slow, on kvm_pvm).
LINUX_SCRIPT = r"""C=/dev/virtio-ports/org.pier.bench.ctl;P=/dev/virtio-ports/org.pier.bench
while [ ! -e $C ];do sleep 1;done
exec 9<>$C;echo hello >&9
while read -r c a b n <&9;do case $c in
g2h)for p in $(seq 1 $n);do dd if=/dev/zero of=$P$p bs=$a count=$b 2>/dev/null& done;wait;echo done >&9;;
h2g)for p in $(seq 1 $n);do head -c $b $P$p >/dev/null& done;echo started >&9;wait;echo done >&9;;
echo)(exec 3<>${P}1;exec cat <&3 >&3)& k=$!;echo started >&9;;
stop)kill $k;wait;echo stopped >&9;;
quit)echo bye >&9;exit 0;;
esac;done
"""


def linux_b64():
    import base64
    return base64.b64encode(LINUX_SCRIPT.encode()).decode()


class LinuxSession:
    """One boot of the Debian guest with a control port and `ports` data ports, all connected
    for the whole session (so the guest never sees a port without its host end)."""

    def __init__(self, system, ports, boot_timeout, stall=120):
        self.system = system
        self.tmp = tempfile.mkdtemp(prefix="pier-bench-linux-")
        ctl = os.path.join(self.tmp, "ctl.sock")
        paths = [os.path.join(self.tmp, f"p{p}.sock") for p in range(1, ports + 1)]
        self.lines, self.ready_at = [], None
        self.t_exec = time.perf_counter()
        self.proc = subprocess.Popen(system.linux_argv(ctl, paths), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.ctl = connect(ctl, self.proc)
            self.socks = [connect(p, self.proc) for p in paths]
        except BenchError:
            self.close()
            raise BenchError(self.failure("no port socket"))
        self.ctl_buf = b""
        try:
            hello = self.wait_hello(boot_timeout, stall)
        except (OSError, BenchError) as e:
            self.close()
            raise BenchError(self.failure(f"the guest did not start its bench script ({e})"))
        if hello != "hello":
            self.close()
            raise BenchError(self.failure(f"unexpected first control line {hello!r}"))
        self.boot_ms = ((self.ready_at or time.perf_counter()) - self.t_exec) * 1e3
        self.ctl.settimeout(600)

    def wait_hello(self, timeout, stall):
        """The first control line, within `timeout` s; gives up early when the VMM process has
        used no CPU at all (guest time included) for `stall` s: a hung guest (QEMU with KVM on
        kvm_pvm stops this way on the Debian kernel)."""
        end = time.time() + timeout
        last_cpu, last_change = None, time.time()
        self.ctl.settimeout(5)
        while True:
            try:
                return self.reply()
            except socket.timeout:
                pass
            now = time.time()
            if now > end:
                raise BenchError(f"no answer within {timeout:.0f} s")
            try:
                with open(f"/proc/{self.proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                cpu = int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                raise BenchError("the VMM exited")
            if cpu != last_cpu:
                last_cpu, last_change = cpu, now
            elif now - last_change > stall:
                if any("emulation failure" in l or "internal error" in l for l in self.lines):
                    raise BenchError("the VMM stopped the guest on a KVM emulation failure "
                                     "(KVM internal error; its register dump is below)")
                raise BenchError(f"the guest hung: the VMM used no CPU for {stall:.0f} s")

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            if "PIER-READY" in line and self.ready_at is None:
                self.ready_at = time.perf_counter()

    def failure(self, what):
        return f"{self.system.label} (linux guest): {what}\n" + "\n".join(self.lines[-15:])

    def reply(self):
        while b"\n" not in self.ctl_buf:
            d = self.ctl.recv(4096)
            if not d:
                raise BenchError("control port closed")
            self.ctl_buf += d
        line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def command(self, text, expect):
        self.ctl.sendall(text.encode() + b"\n")
        got = self.reply()
        if got != expect:
            raise BenchError(self.failure(f"{text!r}: expected {expect!r}, got {got!r}"))

    def g2h(self, size, count, ports):
        total = size * count
        firsts, lasts, first_len = [None] * ports, [0.0] * ports, [0] * ports

        def recv(i):
            buf = bytearray(1 << 20)
            left = total
            while left:
                n = self.socks[i].recv_into(buf, min(len(buf), left))
                if n == 0:
                    raise BenchError("connection closed early")
                if firsts[i] is None:
                    firsts[i], first_len[i] = time.perf_counter(), n
                left -= n
            lasts[i] = time.perf_counter()

        ths = [threading.Thread(target=recv, args=(i,)) for i in range(ports)]
        for t in ths:
            t.start()
        self.ctl.sendall(f"g2h {size} {count} {ports}\n".encode())
        for t in ths:
            t.join()
        got = self.reply()
        if got != "done":
            raise BenchError(self.failure(f"g2h: got {got!r}"))
        moved = total * ports - sum(first_len)
        secs = max(lasts) - min(firsts)
        return (moved / secs / 1e6 if secs > 0 and moved > 0 else total * ports / 1e-6 / 1e6), \
            total * ports

    def h2g(self, size, total, ports):
        self.command(f"h2g 0 {total} {ports}", "started")
        t0 = time.perf_counter()
        ths = [threading.Thread(target=send_all, args=(self.socks[i], total, size))
               for i in range(ports)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        got = self.reply()
        if got != "done":
            raise BenchError(self.failure(f"h2g: got {got!r}"))
        return total * ports / (time.perf_counter() - t0) / 1e6, total * ports

    def pingpong(self, size, rounds):
        self.command("echo", "started")
        lat = round_trips(self.socks[0], size, rounds)
        self.command("stop", "stopped")
        lat.sort()
        return lat[len(lat) // 2] * 1e6, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6

    def close(self):
        try:
            if self.proc.poll() is None and hasattr(self, "ctl_buf"):
                self.ctl.settimeout(30)
                self.command("quit", "bye")
                self.proc.wait(120)
        except (OSError, BenchError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def send_all(s, total, size):
    payload = bytes(size)
    view = memoryview(payload)
    left = total
    while left:
        n = s.send(view[: min(size, left)])
        left -= n


def recv_all(s, total):
    buf = bytearray(1 << 20)
    left = total
    while left:
        n = s.recv_into(buf, min(len(buf), left))
        if n == 0:
            raise BenchError("connection closed early")
        left -= n


class Bench:
    def __init__(self, args, systems):
        self.a, self.systems = args, systems
        self.results = []  # dicts: system engine test dir size ports unit values
        self.cpu = {}      # system label -> [cpu seconds, bytes]
        self.done, self.total = 0, 0
        self.broken = {}   # system label -> why it could not run
        self.failed = []   # points a comparison system failed
        self.engines = {}  # system label -> engine, as recorded

    # ---- progress ------------------------------------------------------------------------
    def step(self, what):
        self.done += 1
        if not sys.stderr.isatty() or self.a.no_progress:
            return
        width = 30
        frac = self.done / max(1, self.total)
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {what[:60]:60}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")

    # ---- one run of each kind --------------------------------------------------------------
    def boot(self, system, cmdline, ports):
        tmp = tempfile.mkdtemp(prefix="pier-bench-")
        try:
            g = Guest(system, cmdline, ports, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return g

    def throughput(self, system, direction, size, ports, total):
        """MB/s over `ports` ports, `total` bytes each; direction h2g (host writes `size`) or g2h
        (the guest writes `size`)."""
        cmd = f"ports={ports} bytes={total} verify=0 wait_host=1 dir={direction}"
        if direction == "g2h":
            cmd += f" wsize={size}"
        g = self.boot(system, cmd, ports)
        try:
            g.wait_ready(self.a.boot_timeout)
            cpu0 = proc_cpu_seconds(g.proc.pid)
            t0 = time.perf_counter()
            work = (lambda s: send_all(s, total, size)) if direction == "h2g" else (
                lambda s: recv_all(s, total))
            ths = [threading.Thread(target=work, args=(s,)) for s in g.socks]
            for t in ths:
                t.start()
            for t in ths:
                t.join()
            if direction == "h2g":
                # Done when the guest has it all: its own TSC-timed loop, printed at the end.
                deadline = time.time() + 120
                while g.line_value("console_stream:") is None and g.proc.poll() is None:
                    if time.time() > deadline:
                        break
                    time.sleep(0.001)
            t1 = time.perf_counter()
            cpu1 = proc_cpu_seconds(g.proc.pid)
            g.finish()
        finally:
            g.kill()
            shutil.rmtree(g.tmp, ignore_errors=True)
        secs = t1 - t0
        if direction == "h2g":
            line = g.line_value("console_stream:")
            us = int(line.split(" in ")[1].split()[0]) if line else 0
            if us > 0:
                secs = us / 1e6
        if cpu0 is not None and cpu1 is not None and size >= 4 * KiB:  # bulk transfers only
            c = self.cpu.setdefault((system.label, direction), [0.0, 0])
            c[0] += cpu1 - cpu0
            c[1] += total * ports
        return total * ports / secs / 1e6

    def pingpong(self, system, size, rounds):
        g = self.boot(system, f"ports=1 bytes={size * rounds} verify=0 wait_host=1 echo", 1)
        try:
            g.wait_ready(self.a.boot_timeout)
            lat = round_trips(g.socks[0], size, rounds)
            g.finish()
        finally:
            g.kill()
            shutil.rmtree(g.tmp, ignore_errors=True)
        lat.sort()
        return lat[len(lat) // 2] * 1e6, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6

    def boot_time(self, system):
        g = self.boot(system, "ports=1 bytes=1 verify=0 wait_host=1 dir=h2g", 1)
        try:
            t = g.wait_ready(self.a.boot_timeout)
            g.socks[0].sendall(b"x")
            g.finish()
        finally:
            g.kill()
            shutil.rmtree(g.tmp, ignore_errors=True)
        return t * 1e3

    def ceiling(self, direction, size, ports, total):
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(ports)]
        ths = [threading.Thread(target=send_all, args=(a, total, size)) for a, _ in pairs]
        ths += [threading.Thread(target=recv_all, args=(b, total)) for _, b in pairs]
        t0 = time.perf_counter()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        secs = time.perf_counter() - t0
        for a, b in pairs:
            a.close()
            b.close()
        return total * ports / secs / 1e6

    # ---- the matrix --------------------------------------------------------------------------
    def points(self):
        a = self.a
        pts = []
        for size in a.guest_sizes:
            pts.append(("throughput", "g2h", size, 1))
        for size in a.host_sizes:
            pts.append(("throughput", "h2g", size, 1))
        for ports in a.ports:
            if ports == 1:
                continue
            pts.append(("throughput", "g2h", max(a.guest_sizes), ports))
            pts.append(("throughput", "h2g", max(a.host_sizes), ports))
        for size in a.pingpong_sizes:
            pts.append(("pingpong", "rtt", size, 1))
        pts.append(("boot", "-", 0, 1))
        return pts

    def total_bytes(self, direction, size):
        base = self.a.mib * MiB
        if direction == "g2h":  # small guest writes are slow: scale the amount with the size
            return max(min(base, size * self.a.writes_per_point), min(base, 64 * KiB))
        return max(base, size)

    def run(self):
        pts = self.points()
        vm_systems = [s for s in self.systems if s is not None]
        n_ceiling = sum(1 for p in pts if p[0] == "throughput") if self.a.ceiling else 0
        self.total = (len(pts) * len(vm_systems) + n_ceiling) * self.a.runs
        for kind, direction, size, ports in pts:
            vals = {}
            for r in range(self.a.runs):
                # Interleave the systems within each run so drift in the host hits all alike.
                for sysm in vm_systems:
                    if sysm.label in self.broken:
                        self.step(f"{sysm.label}: skipped")
                        continue
                    what = f"{sysm.label} {kind} {direction} {human(size)} x{ports} run {r + 1}"
                    try:
                        if kind == "throughput":
                            v = self.throughput(sysm, direction, size, ports,
                                                self.total_bytes(direction, size))
                        elif kind == "pingpong":
                            v = self.pingpong(sysm, size, self.a.rounds)
                        else:
                            v = self.boot_time(sysm)
                    except BenchError as e:
                        if sysm.label == "pier":
                            raise
                        # One failed point is reported; three take the system out of the run.
                        self.failed.append(f"{what}: {str(e).splitlines()[0]}")
                        sys.stderr.write(f"\npier bench: {what} failed: {e}\n")
                        if sum(1 for f in self.failed if f.startswith(sysm.label + " ")) >= 3:
                            self.broken[sysm.label] = str(e)
                        self.step(what)
                        continue
                    vals.setdefault(sysm.label, []).append(v)
                    self.step(what)
                if self.a.ceiling and kind == "throughput":
                    v = self.ceiling(direction, size, ports, self.total_bytes(direction, size))
                    vals.setdefault("ceiling", []).append(v)
                    self.step(f"ceiling {direction} {human(size)} x{ports}")
            for label, vs in vals.items():
                engine = next((s.engine for s in vm_systems if s.label == label), "host")
                if kind == "pingpong":
                    self.add(label, engine, "latency_p50", direction, size, ports, "us",
                             [v[0] for v in vs])
                    self.add(label, engine, "latency_p99", direction, size, ports, "us",
                             [v[1] for v in vs])
                elif kind == "boot":
                    self.add(label, engine, "boot", direction, size, ports, "ms", vs)
                else:
                    self.add(label, engine, "throughput", direction, size, ports, "MB/s", vs)
        self.add_cpu()

    # ---- --guest linux: one boot per system, the whole matrix inside it -----------------------
    def run_linux(self):
        a = self.a
        pts = [p for p in self.points() if p[0] != "boot"]
        systems = list(self.systems)
        self.total = len(systems) * (len(pts) * a.runs + 1)
        while systems:
            sysm = systems.pop(0)
            self.step(f"{sysm.label}: booting the Debian guest")
            try:
                sess = LinuxSession(sysm, max(a.ports), a.boot_timeout)
            except BenchError as e:
                if sysm.label == "pier":
                    raise
                self.broken[sysm.label] = str(e)
                sys.stderr.write(f"\npier bench: {sysm.label} could not run the Linux guest: "
                                 f"{str(e).splitlines()[0]}\n")
                if getattr(sysm, "accel", "") == "kvm" and a.allow_tcg:
                    t = Qemu(sysm.binary, sysm.guest, "tcg", sysm.pier_binary)
                    systems.insert(0, t)
                    self.total += len(pts) * a.runs + 1
                else:
                    self.done += len(pts) * a.runs
                continue
            try:
                self.add(sysm.label, sysm.engine, "boot", "-", 0, 1, "ms", [sess.boot_ms])
                for kind, direction, size, ports in pts:
                    vals, amount = [], None
                    for r in range(a.runs):
                        self.step(f"{sysm.label} {kind} {direction} {human(size)} x{ports} "
                                  f"run {r + 1}")
                        if kind == "pingpong":
                            vals.append(sess.pingpong(size, a.rounds))
                            continue
                        if amount is None:  # calibrate: a short run sets the amount for ~T s
                            cal = max(1, (64 * KiB) // size) if direction == "g2h" else 256 * KiB
                            if direction == "g2h":
                                rate, _ = sess.g2h(size, min(cal, 4096), ports)
                                amount = max(1, min(int(rate * 1e6 * a.seconds / size / ports),
                                                    a.mib * MiB // size))
                            else:
                                rate, _ = sess.h2g(size, cal, ports)
                                amount = max(size, min(int(rate * 1e6 * a.seconds / ports),
                                                       a.mib * MiB))
                        cpu0 = proc_cpu_seconds(sess.proc.pid)
                        if direction == "g2h":
                            v, moved = sess.g2h(size, amount, ports)
                        else:
                            v, moved = sess.h2g(size, amount, ports)
                        cpu1 = proc_cpu_seconds(sess.proc.pid)
                        if cpu0 is not None and cpu1 is not None and size >= 4 * KiB:
                            c = self.cpu.setdefault((sysm.label, direction), [0.0, 0])
                            c[0] += cpu1 - cpu0
                            c[1] += moved
                        vals.append(v)
                    if kind == "pingpong":
                        self.add(sysm.label, sysm.engine, "latency_p50", direction, size, ports,
                                 "us", [v[0] for v in vals])
                        self.add(sysm.label, sysm.engine, "latency_p99", direction, size, ports,
                                 "us", [v[1] for v in vals])
                    else:
                        self.add(sysm.label, sysm.engine, "throughput", direction, size, ports,
                                 "MB/s", vals)
            finally:
                sess.close()
        if a.ceiling:
            for kind, direction, size, ports in pts:
                if kind == "throughput":
                    vals = [self.ceiling(direction, size, ports, self.total_bytes(direction, size))
                            for _ in range(a.runs)]
                    self.add("ceiling", "host", "throughput", direction, size, ports, "MB/s", vals)
        self.add_cpu()

    def add_cpu(self):
        for (label, direction), (cpu, moved) in sorted(self.cpu.items()):
            if moved:
                self.add(label, self.engines[label], "cpu_per_gib", direction, 0, 0, "s/GiB",
                         [max(cpu, 0.0) / (moved / GiB)])

    def add(self, label, engine, test, direction, size, ports, unit, vals):
        self.engines[label] = engine
        self.results.append(dict(system=label, engine=engine, test=test, direction=direction,
                                 size=size, ports=ports, unit=unit, runs=len(vals),
                                 min=min(vals), median=statistics.median(vals), max=max(vals)))

    # ---- output ------------------------------------------------------------------------------
    def table(self):
        labels = []
        for r in self.results:
            if r["system"] not in labels:
                labels.append(r["system"])
        others = [l for l in labels if l != "pier"]
        keys = []
        for r in self.results:
            k = (r["test"], r["direction"], r["size"], r["ports"], r["unit"])
            if k not in keys:
                keys.append(k)
        by = {(r["system"],) + (r["test"], r["direction"], r["size"], r["ports"], r["unit"]): r
              for r in self.results}
        names = {"g2h": "guest->host", "h2g": "host->guest", "rtt": "ping-pong"}
        head = f"{'point':36} {'pier min/median/max':>28}"
        for o in others:
            head += f" {o + ' median':>16} {'pier/' + o:>9}"
        out = [head, "-" * len(head)]
        for test, d, size, ports, unit in keys:
            if test == "boot":
                name = f"boot to READY ({unit})"
            elif test == "cpu_per_gib":
                name = f"VMM CPU/GiB, {names[d]} ({unit})"
            elif test.startswith("latency"):
                name = f"{names[d]} {human(size)} {test[8:]} ({unit})"
            else:
                name = f"{names[d]} {human(size)} writes, {ports}p ({unit})"
            p = by.get(("pier", test, d, size, ports, unit))
            row = f"{name:36} "
            row += (f"{num(p['min']):>9}{num(p['median']):>9}{num(p['max']):>10}" if p
                    else f"{'-':>28}")
            for o in others:
                q = by.get((o, test, d, size, ports, unit))
                if q:
                    ratio = f"{p['median'] / q['median']:.2f}" if p and q["median"] else "-"
                    row += f" {num(q['median']):>16} {ratio:>9}"
                else:
                    row += f" {'-':>16} {'-':>9}"
            out.append(row)
        if others:
            out.append("ratio = pier median / other median: > 1 is pier ahead for MB/s rows, "
                       "behind for time (us, ms) and CPU (s/GiB) rows")
        engines = sorted({f"{r['system']}: {r['engine']}" for r in self.results})
        out.append("engines: " + ", ".join(engines))
        for f in self.failed:
            out.append(f"failed: {f}")
        for label, why in self.broken.items():
            out.append(f"{label}: could not run here: {why.splitlines()[0]}")
        return "\n".join(out)

    def write_csv(self, path):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["system", "engine", "test", "direction", "size",
                                              "ports", "unit", "runs", "min", "median", "max"])
            w.writeheader()
            for r in self.results:
                w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})

    def plot(self, path):
        gp = shutil.which("gnuplot")
        if not gp:
            raise BenchError("--plot needs gnuplot (apt-get install gnuplot-nox; see "
                             "tools/install-deps)")
        tmp = tempfile.mkdtemp(prefix="pier-plot-")
        labels = []
        for r in self.results:
            if r["system"] not in labels:
                labels.append(r["system"])
        plots = {}
        for d in ("g2h", "h2g"):
            series = []
            for l in labels:
                rows = sorted((r for r in self.results if r["system"] == l and r["direction"] == d
                               and r["test"] == "throughput" and r["ports"] == 1),
                              key=lambda r: r["size"])
                if not rows:
                    continue
                fn = os.path.join(tmp, f"{d}-{l}.dat")
                with open(fn, "w") as f:
                    for r in rows:
                        f.write(f"{r['size']} {r['median']} {r['min']} {r['max']}\n")
                series.append(f"'{fn}' using 1:2:3:4 with yerrorlines title '{l}'")
            plots[d] = series
        lat = os.path.join(tmp, "lat.dat")
        lat_rows = [r for r in self.results if r["test"].startswith("latency")]
        cols = [l for l in labels if any(r["system"] == l for r in lat_rows)]
        with open(lat, "w") as f:
            for size in sorted({r["size"] for r in lat_rows}):
                for t in ("latency_p50", "latency_p99"):
                    vals = []
                    for c in cols:
                        m = [r["median"] for r in lat_rows
                             if r["system"] == c and r["size"] == size and r["test"] == t]
                        vals.append(f"{m[0]:.2f}" if m else "0")
                    f.write(f"\"{human(size).replace(' ', '')}-{t[8:]}\" " + " ".join(vals) + "\n")
        script = [
            f"set terminal pngcairo size 1500,480 font ',10'",
            f"set output '{path}'",
            "set multiplot layout 1,3",
            "set logscale xy", "set grid", "set key top left", "set format x '%.0s%cB'",
            "set xlabel 'guest write size (bytes)'", "set ylabel 'MB/s'",
            "set title 'guest -> host, 1 port'",
        ]
        if plots.get("g2h"):
            script.append("plot " + ", ".join(plots["g2h"]))
        script += ["set xlabel 'host write size (bytes)'", "set title 'host -> guest, 1 port'"]
        if plots.get("h2g"):
            script.append("plot " + ", ".join(plots["h2g"]))
        script += ["unset logscale x", "set format x '%g'", "set logscale y",
                   "set style data histograms", "set style histogram clustered",
                   "set style fill solid 0.8", "set boxwidth 0.9", "set xtics rotate by -30",
                   "set xlabel ''", "set ylabel 'round trip (us)'", "set title 'ping-pong latency'"]
        if cols:
            script.append("plot " + ", ".join(
                f"'{lat}' using {i + 2}:xtic(1) title '{c}'" for i, c in enumerate(cols)))
        script.append("unset multiplot")
        res = subprocess.run([gp], input="\n".join(script) + "\n", text=True,
                             capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if res.returncode != 0:
            raise BenchError(f"gnuplot failed: {res.stderr.strip()}")


def sizes(text):
    out = []
    for t in text.split(","):
        t = t.strip().upper()
        mult = 1
        if t.endswith("K"):
            mult, t = KiB, t[:-1]
        elif t.endswith("M"):
            mult, t = MiB, t[:-1]
        out.append(int(t) * mult)
    return out


MICRO_BENCHES = ("virtqueue_bench", "console_bench", "virtio_pci_bench")


def run_micro(pier, extra):
    """The Google Benchmark binaries for the virtqueue, console and virtio-pci hot paths (built by
    CMake into <build>/benches/), one after the other."""
    here = os.path.dirname(os.path.abspath(pier))
    missing = [b for b in MICRO_BENCHES if not os.access(os.path.join(here, "benches", b), os.X_OK)]
    if missing:
        raise BenchError(f"micro-benchmarks {', '.join(missing)} not found in {here}/benches; "
                         "build them with `ninja -C build " + " ".join(missing) + "`")
    for b in MICRO_BENCHES:
        print(f"== {b}", flush=True)
        rc = subprocess.call([os.path.join(here, "benches", b)] + extra)
        if rc != 0:
            raise BenchError(f"{b} exited {rc}")
    return 0


def load_csv(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in ("size", "ports", "runs"):
                r[k] = int(r[k])
            for k in ("min", "median", "max"):
                r[k] = float(r[k])
            rows.append(r)
    return rows


def find_guest(pier, name):
    here = os.path.dirname(os.path.abspath(pier))
    for c in (os.path.join(here, "tests", "bare", name), os.path.join(ROOT, "build", "tests",
                                                                      "bare", name)):
        if os.path.exists(c):
            return c
    raise BenchError(f"cannot find the bare guest {name} next to {pier}; build it with "
                     "`ninja -C build bare_guests` or pass --guest-image")


def qemu_probe(binary, guest, accel, timeout):
    """Boots the bench guest once under QEMU with `accel`; returns None or why it failed."""
    q = Qemu(binary, guest, accel)
    b = Bench(argparse.Namespace(boot_timeout=timeout, no_progress=True), [q])
    try:
        b.boot_time(q)
        return None
    except BenchError as e:
        return str(e)


def main_linux(a, compare):
    guest_dir = os.path.join(os.path.dirname(os.path.abspath(a.pier)), "guest")
    if not os.path.exists(os.path.join(guest_dir, "vmlinuz")):
        raise BenchError(f"--guest linux needs the Debian guest in {guest_dir} (tools/guest-image)")
    systems = [Pier(a.pier, "")]
    if "qemu" in compare:
        if not shutil.which(a.qemu):
            raise BenchError(f"--compare qemu: {a.qemu} not found (apt-get install "
                             "qemu-system-x86; see tools/install-deps)")
        accel = "kvm" if a.qemu_accel in ("auto", "kvm") else "tcg"
        systems.append(Qemu(a.qemu, "", accel, a.pier))
    a.ceiling = "ceiling" in compare
    if a.boot_timeout is None:
        a.boot_timeout = 1500  # a Debian boot on kvm_pvm takes 5-8 minutes
    b = Bench(a, systems)
    b.run_linux()
    print(b.table())
    print("note: --guest linux: one boot per system, every point inside it; the Debian guest "
          "kernel's virtio_console and syscalls are part of every number")
    if a.csv:
        b.write_csv(a.csv)
        print(f"CSV: {a.csv}")
    if a.plot:
        b.plot(a.plot)
        print(f"plot: {a.plot}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="pier bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pier", default=os.path.join(ROOT, "build", "pier"),
                    help="the pier binary (set by `pier bench`)")
    ap.add_argument("--guest", choices=["bare", "linux"], default="bare")
    ap.add_argument("--guest-image", help="the bare guest ELF (default: next to pier)")
    ap.add_argument("--compare", action="append", default=[],
                    help="qemu and/or ceiling (repeat or comma-separate)")
    ap.add_argument("--qemu", default="qemu-system-x86_64", help="the QEMU binary")
    ap.add_argument("--qemu-accel", choices=["auto", "kvm", "tcg"], default="auto",
                    help="auto: KVM, or say why not (and use TCG with --allow-tcg)")
    ap.add_argument("--allow-tcg", action="store_true",
                    help="if QEMU cannot run the guest with KVM here, compare with QEMU TCG "
                         "(labelled qemu-tcg)")
    ap.add_argument("--runs", type=int, default=3, help="runs per point (min/median/max)")
    ap.add_argument("--mib", type=int, default=32, help="MiB per port per throughput point")
    ap.add_argument("--writes-per-point", type=int, default=1 << 16,
                    help="cap for small guest writes: bytes = min(MiB, size x this)")
    ap.add_argument("--guest-sizes", type=sizes,
                    default=sizes("1,4,16,64,256,1K,4K,16K,32K"))
    ap.add_argument("--host-sizes", type=sizes, default=sizes("4K,16K,64K,256K,1M"))
    ap.add_argument("--ports", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8])
    ap.add_argument("--pingpong-sizes", type=sizes, default=sizes("1,4K"))
    ap.add_argument("--rounds", type=int, default=None,
                    help="ping-pong round trips per run (default 2000; 200 for --guest linux)")
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="--guest linux: target seconds per throughput run (amounts are "
                         "calibrated by a short run first)")
    ap.add_argument("--quick", action="store_true",
                    help="CI mode: tiny sizes, one run (what the integration test runs)")
    ap.add_argument("--boot-timeout", type=float, default=None,
                    help="seconds to wait for the guest's READY line (default 30; 600 for TCG)")
    ap.add_argument("--csv", help="write every point to this CSV file")
    ap.add_argument("--plot", help="write a PNG plot (gnuplot) to this file")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--from-csv", metavar="FILE",
                    help="no run: print the table (and --plot) from a CSV an earlier run wrote")
    ap.add_argument("--micro", action="store_true",
                    help="run the Google Benchmark micro-benchmarks (virtqueue, console, "
                         "virtio-pci hot paths) instead; arguments after -- go to each binary")
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    a = ap.parse_args(argv)
    if a.micro:
        return run_micro(a.pier, extra)
    if a.from_csv:
        b = Bench(a, [])
        b.results = load_csv(a.from_csv)
        print(b.table())
        if a.plot:
            b.plot(a.plot)
            print(f"plot: {a.plot}")
        return 0
    compare = {c.strip() for x in a.compare for c in x.split(",") if c.strip()}
    unknown = compare - {"qemu", "ceiling"}
    if unknown:
        ap.error(f"--compare: unknown {', '.join(sorted(unknown))} (qemu, ceiling)")
    a.ceiling = "ceiling" in compare
    if a.rounds is None:
        a.rounds = 200 if a.guest == "linux" else 2000
    if a.quick:
        a.runs, a.mib, a.seconds = 1, 1, 0.5
        a.guest_sizes, a.host_sizes = sizes("64,4K"), sizes("4K,64K")
        a.ports, a.pingpong_sizes, a.rounds = [1, 2], sizes("1"), 50
    if not os.access(a.pier, os.X_OK):
        raise BenchError(f"pier binary {a.pier} not found or not executable")
    if a.guest == "linux":
        return main_linux(a, compare)
    image = a.guest_image or find_guest(a.pier, "console_stream.elf")
    systems = [Pier(a.pier, image)]
    notes = []
    if "qemu" in compare:
        if not shutil.which(a.qemu):
            raise BenchError(f"--compare qemu: {a.qemu} not found (apt-get install "
                             "qemu-system-x86; see tools/install-deps)")
        accel = a.qemu_accel
        if accel in ("auto", "kvm"):
            why = qemu_probe(a.qemu, image, "kvm", a.boot_timeout or 60)
            if why is None:
                accel = "kvm"
            else:
                notes.append(f"QEMU with KVM cannot run the guest here: {why.splitlines()[0]} "
                             + " | ".join(why.splitlines()[1:4]))
                accel = "tcg" if (a.allow_tcg and a.qemu_accel == "auto") else None
                if accel is None:
                    notes.append("QEMU skipped (pass --allow-tcg to compare with QEMU TCG)")
        if accel:
            systems.append(Qemu(a.qemu, image, accel, a.pier))
            if accel == "tcg":
                notes.append("QEMU runs with TCG (software emulation): 'qemu-tcg' is not a "
                             "like-for-like comparison with KVM")
    if a.boot_timeout is None:
        # Generous: the guest's CPL0 set-up is emulated on kvm_pvm (8 ports under QEMU took
        # ~30 s on a loaded host); a hung guest costs this much per point.
        a.boot_timeout = 600 if any(getattr(s, "accel", "kvm") == "tcg" for s in systems) else 120
    for n in notes:
        print("note: " + n, file=sys.stderr)
    b = Bench(a, systems)
    b.run()
    print(b.table())
    for n in notes:
        print("note: " + n)
    if a.csv:
        b.write_csv(a.csv)
        print(f"CSV: {a.csv}")
    if a.plot:
        b.plot(a.plot)
        print(f"plot: {a.plot}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"pier bench: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
