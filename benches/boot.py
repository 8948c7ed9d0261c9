#!/usr/bin/env python3
"""Boot benchmark: the same kernel + initramfs booted N times with pier and with QEMU 7.2.

For each run: wall time from process start to the guest's `PIER-READY` marker and to process
exit, the guest's own uptime at the marker, the peak RSS of the VMM process; for pier also its
memory line (guest RAM vs its own anonymous memory) and the kvm_pvm completion counts per kind.
Prints min/median/max per VMM and the ratios against pier; --csv writes every run.

QEMU runs: with -enable-kvm where it can boot this guest (hardware KVM); on a kvm_pvm host QEMU
+ KVM cannot (KVM-HERE.md: it stops at the emulator's gaps), so there it is tried once with a
short timeout (--qemu-kvm-timeout, 0 to skip) and reported as such. QEMU with TCG (software
emulation, what a user of a kvm_pvm machine would run instead) is always measured, labelled TCG.

Usage: benches/boot.py [--runs N] [--guest DIR] [--pier PATH] [--memory 512M] [--cpus 1]
                       [--command 'echo hi'] [--pier-arg ARG]... [--qemu-kvm-timeout S]
                       [--no-qemu] [--no-tcg] [--csv FILE]
"""
import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(rb"PIER-READY uptime=([0-9.]+)")
EXIT_MARKER = re.compile(rb"PIER-EXIT status=(-?[0-9]+)")


def run_timed(argv, timeout, log_path):
    """Runs argv; returns dict(ready, uptime, exit, status, guest_status, maxrss_kib, err, timed_out)."""
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
        os.set_blocking(p.stdout.fileno(), False)
        os.set_blocking(p.stderr.fileno(), False)
        out, err = b"", b""
        ready = uptime = guest_status = None
        timed_out = False
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        sel.register(p.stderr, selectors.EVENT_READ)
        open_fds = 2
        while open_fds:
            remaining = timeout - (time.monotonic() - t0)
            if remaining <= 0:
                timed_out = True
                p.kill()
                break
            for key, _ in sel.select(min(remaining, 1.0)):
                chunk = key.fileobj.read()
                if chunk is None:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_fds -= 1
                    continue
                if key.fileobj is p.stdout:
                    out += chunk
                    log.write(chunk)
                    if ready is None:
                        m = MARKER.search(out)
                        if m:
                            ready = time.monotonic() - t0
                            uptime = float(m.group(1))
                    if guest_status is None:
                        m = EXIT_MARKER.search(out)
                        if m:
                            guest_status = int(m.group(1))
                else:
                    err += chunk
        _, status, rusage = os.wait4(p.pid, 0)
        total = time.monotonic() - t0
        log.write(b"\n--- stderr ---\n" + err)
    return {
        "ready": ready, "uptime": uptime, "exit": None if timed_out else total,
        "status": os.waitstatus_to_exitcode(status), "guest_status": guest_status,
        "maxrss_kib": rusage.ru_maxrss, "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "err": err.decode(errors="replace"), "timed_out": timed_out,
    }


def pier_details(err):
    d = {}
    m = re.search(r"memory: guest RAM resident (\d+) KiB; pier's own anonymous (\d+) KiB, plus "
                  r"(\d+) KiB", err)
    if m:
        d["guest_ram_kib"], d["pier_anon_kib"], d["shared_kib"] = map(int, m.groups())
    m = re.search(r"host profile pvm: completed (.*)", err)
    if m:
        d["completions"] = m.group(1).strip()
    m = re.search(r"host profile: (\w+)", err)
    if m:
        d["profile"] = m.group(1)
    return d


def ensure_qemu():
    if shutil.which("qemu-system-x86_64"):
        return True
    print("qemu-system-x86_64 missing: installing Debian's qemu-system-x86 with apt-get",
          file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    r = subprocess.run(sudo + ["apt-get", "install", "-y", "--no-install-recommends",
                               "qemu-system-x86"], stdout=subprocess.DEVNULL)
    return r.returncode == 0 and shutil.which("qemu-system-x86_64") is not None


def qemu_version():
    try:
        out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                             text=True).stdout
        return out.split("\n")[0].replace("QEMU emulator version ", "")
    except OSError:
        return "?"


def kvm_pvm_host():
    return os.path.exists("/sys/module/kvm_pvm")


def fmt_s(v):
    return "-" if v is None else f"{v:.1f}"


def summarize(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return min(vals), statistics.median(vals), max(vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1, help="boots per VMM (default 1)")
    ap.add_argument("--guest", default=os.path.join(ROOT, "build", "guest"),
                    help="directory with vmlinuz and initramfs.cpio (default build/guest)")
    ap.add_argument("--pier", default=os.path.join(ROOT, "build", "pier"))
    ap.add_argument("--memory", default="512M")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--command", default="echo hi", help="what the guest's /init runs")
    ap.add_argument("--pier-arg", action="append", default=[],
                    help="extra pier argument (repeatable), e.g. --pier-arg=--time-dilation=20")
    ap.add_argument("--timeout", type=float, default=1800, help="per boot, seconds")
    ap.add_argument("--qemu-kvm-timeout", type=float, default=60,
                    help="on a kvm_pvm host: how long QEMU+KVM is given once (0: skip)")
    ap.add_argument("--no-qemu", action="store_true", help="pier only")
    ap.add_argument("--no-tcg", action="store_true",
                    help="no QEMU TCG runs (inside tools/kvm-host's nested host they would run "
                    "under two layers of emulation: minutes per boot, a figure of nothing)")
    ap.add_argument("--csv", help="write every run to this CSV file")
    ap.add_argument("--logs", default=os.path.join(ROOT, "build", "bench-logs"),
                    help="where each run's console log goes")
    args = ap.parse_args()

    kernel = os.path.join(args.guest, "vmlinuz")
    initrd = os.path.join(args.guest, "initramfs.cpio")
    for f in (kernel, initrd, args.pier):
        if not os.path.exists(f):
            sys.exit(f"boot.py: {f} is missing (tools/setup builds pier and the default guest)")
    os.makedirs(args.logs, exist_ok=True)
    mem_mib = int(re.match(r"(\d+)", args.memory).group(1)) * (1024 if args.memory.upper().endswith("G") else 1)

    pvm = kvm_pvm_host()
    vmms = []  # (label, argv, runs, timeout)
    pier_argv = [args.pier, "run", "--kernel", kernel, "--initrd", initrd, "--memory", args.memory,
                 "--cpus", str(args.cpus), "--log-level", "info", *args.pier_arg, "--",
                 *args.command.split()]
    vmms.append(("pier" + (" (kvm_pvm host profile)" if pvm else " (KVM)"), pier_argv, args.runs,
                 args.timeout))
    if not args.no_qemu and ensure_qemu():
        ver = qemu_version()
        cmdline = f"console=ttyS0 reboot=k panic=-1 -- {args.command}"
        qemu = ["qemu-system-x86_64", "-M", "q35", "-nodefaults", "-no-user-config",
                "-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                "-m", str(mem_mib), "-smp", str(args.cpus), "-kernel", kernel, "-initrd", initrd,
                "-append", cmdline]
        if pvm:
            if args.qemu_kvm_timeout > 0:
                vmms.append((f"QEMU {ver} -enable-kvm (-cpu max, kvm_pvm)",
                             qemu + ["-enable-kvm", "-cpu", "max"], 1, args.qemu_kvm_timeout))
        else:
            vmms.append((f"QEMU {ver} -enable-kvm", qemu + ["-enable-kvm", "-cpu", "host"],
                         args.runs, args.timeout))
        if not args.no_tcg:
            vmms.append((f"QEMU {ver} TCG (software emulation, no KVM)",
                         qemu + ["-accel", "tcg", "-cpu", "max"], args.runs, args.timeout))

    results = []
    for label, argv, runs, timeout in vmms:
        for i in range(runs):
            slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40]
            log = os.path.join(args.logs, f"{slug}-{i + 1}.log")
            print(f"[{label}] run {i + 1}/{runs} ...", file=sys.stderr, flush=True)
            r = run_timed(argv, timeout, log)
            r.update(label=label, run=i + 1, log=log)
            if label.startswith("pier"):
                r.update(pier_details(r["err"]))
            ok = r["ready"] is not None
            print(f"[{label}] run {i + 1}: ready {fmt_s(r['ready'])} s, exit {fmt_s(r['exit'])} s"
                  f"{'' if ok else ' (no marker' + (', timed out' if r['timed_out'] else '') + ')'}"
                  f"; log {log}", file=sys.stderr, flush=True)
            results.append(r)

    print(f"\nBoot benchmark: {args.guest} ({args.memory}, {args.cpus} vCPU, command "
          f"'{args.command}'), {args.runs} run(s) each; host: "
          f"{'kvm_pvm (software hypervisor)' if pvm else 'hardware KVM'}")
    head = f"{'VMM':48} {'runs':>4} {'exec->ready s (min/med/max)':>28} {'exec->exit s':>20} " \
           f"{'uptime@ready':>12} {'max RSS':>9}"
    print(head)
    print("-" * len(head))
    pier_med = None
    by_label = {}
    for r in results:
        by_label.setdefault(r["label"], []).append(r)
    for label, rs in by_label.items():
        ready = summarize([r["ready"] for r in rs])
        exit_ = summarize([r["exit"] for r in rs])
        up = summarize([r["uptime"] for r in rs])
        rss = max(r["maxrss_kib"] for r in rs)
        if ready is None:
            last = rs[-1]
            why = "timeout" if last["timed_out"] else f"exit status {last['status']}"
            print(f"{label:48} {len(rs):>4} {'no marker: ' + why:>28} {'-':>20} {'-':>12} "
                  f"{rss // 1024:>6} MiB")
            continue
        rs_txt = "/".join(fmt_s(v) for v in ready)
        ex_txt = "/".join(fmt_s(v) for v in exit_) if exit_ else "-"
        print(f"{label:48} {len(rs):>4} {rs_txt:>28} {ex_txt:>20} {fmt_s(up[1]):>12} "
              f"{rss // 1024:>6} MiB")
        if label.startswith("pier"):
            pier_med = (ready[1], exit_[1] if exit_ else None)
    if pier_med:
        for label, rs in by_label.items():
            if label.startswith("pier"):
                continue
            ready = summarize([r["ready"] for r in rs])
            exit_ = summarize([r["exit"] for r in rs])
            if ready:
                ratio = pier_med[0] / ready[1]
                ratio_exit = (pier_med[1] / exit_[1]) if exit_ and pier_med[1] else None
                print(f"ratio pier / {label}: marker {ratio:.2f}x"
                      + (f", exit {ratio_exit:.2f}x" if ratio_exit else ""))
    for r in results:
        if r["label"].startswith("pier"):
            print(f"pier run {r['run']}: guest RAM resident {r.get('guest_ram_kib', '?')} KiB, "
                  f"pier's own anonymous {r.get('pier_anon_kib', '?')} KiB (+{r.get('shared_kib', '?')}"
                  f" KiB shared libraries), CPU {r['cpu_s']:.1f} s; completions: "
                  f"{r.get('completions', 'none')}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["vmm", "run", "exec_to_ready_s", "exec_to_exit_s", "uptime_at_ready_s",
                        "max_rss_kib", "cpu_s", "exit_status", "guest_status", "completions", "log"])
            for r in results:
                w.writerow([r["label"], r["run"], r["ready"], r["exit"], r["uptime"],
                            r["maxrss_kib"], f"{r['cpu_s']:.2f}", r["status"], r["guest_status"],
                            r.get("completions", ""), r["log"]])
    ok = all(r["ready"] is not None for r in results if r["label"].startswith("pier"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
