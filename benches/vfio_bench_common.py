"""Shared parts of the passthrough benchmarks (benches/vfio_interrupts.py, benches/vfio_mmio.py):
the vfio-user test device as a context manager (started on a socket of its own, stopped and its
directory removed on every way out), one irvmm run of a probe scenario with that device, and
parsers for irvmm's exit report (RUST_LOG=info):

    passthrough NAME at ADDR: trapped BAR accesses: BAR0@0x0=N ... | none
    irqfd vectors NAME MSI-X: V vectors, E enabled, K in KVM, P postable, D delivered by the VMM,
        B blocked or dropped
    interrupt router: translations=... invalidations=... route_commits=... route_changes=...
        signalled=... irqfd_binds=... irqfd_unbinds=...

Not a benchmark itself; imported from the scripts' directory.
"""

import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "target", "guests", "probe.elf")
IRVMM = os.path.join(ROOT, "target", "release", "irvmm")
TESTDEV = os.path.join(ROOT, "target", "release", "vfio-user-testdev")
# How long the device gets to print its listening line, and to exit after irvmm hung up.
DEVICE_START_S = 10
DEVICE_EXIT_S = 5
# irvmm exits with the probe's debug-exit byte: 0 = PROBE PASS.
IRVMM_PASS = 0
LISTENING = "vfio-user-testdev: listening on "

TRAPPED_RE = re.compile(r"passthrough (.*?) at (\S+): trapped BAR accesses: (.*)$", re.M)
IRQFD_RE = re.compile(
    r"irqfd vectors (.*?): (\d+) vectors, (\d+) enabled, (\d+) in KVM, (\d+) postable, "
    r"(\d+) delivered by the VMM, (\d+) blocked or dropped")
ROUTER_RE = re.compile(r"interrupt router: ((?:\w+=\d+ ?)+)")


class TestDevice:
    """A vfio-user-testdev process on a fresh socket; `with` stops it on every way out."""

    def __init__(self, binary, extra_args=()):
        self.binary = binary
        self.extra_args = list(extra_args)
        self.dir = None
        self.proc = None
        self.stderr = []

    @property
    def socket(self):
        return os.path.join(self.dir, "dev.sock")

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="irvmm-bench-testdev-")
        try:
            self.proc = subprocess.Popen([self.binary, "--socket", self.socket] + self.extra_args,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            self._wait_listening()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _wait_listening(self):
        deadline = time.monotonic() + DEVICE_START_S
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(self.proc.stderr.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                self.stderr.append(text)
                if text.startswith(LISTENING):
                    return
        sys.exit(f"{self.binary} did not listen on {self.socket} within {DEVICE_START_S} s "
                 f"(exit status {self.proc.poll()}); stderr:\n" + "\n".join(self.stderr))

    def _drain(self):
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip("\n"))

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            # It exits by itself once its client (irvmm) has gone; otherwise end it.
            try:
                self.proc.wait(timeout=DEVICE_EXIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False


def check_assets(paths):
    """Exits with one clear message per missing file: paths is [(path, how to make it)]."""
    missing = [f"{path} is missing: {fix}" for path, fix in paths if not os.path.exists(path)]
    if missing:
        sys.exit("\n".join(missing))
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("/dev/kvm is missing or not accessible: these benchmarks need KVM")


def irvmm_cmd(irvmm, probe, cmdline, device_arg, extra=()):
    return [irvmm, "--kernel", probe, "--cmdline", cmdline, "--device", device_arg] + list(extra)


def run_irvmm(cmd, scenario, deadline_s):
    """Runs irvmm to its exit with RUST_LOG=info; returns (PASS details as a dict, stdout,
    stderr). Exits with the output tails when it does not pass."""
    env = dict(os.environ, RUST_LOG="info")
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=deadline_s, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        sys.exit(f"{' '.join(cmd)}\ndid not finish within {deadline_s} s; output tail:\n{out[-2000:]}")
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    m = re.search(rf"^PROBE PASS {re.escape(scenario)} (.*)$", out, re.M)
    if p.returncode != IRVMM_PASS or not m:
        sys.exit(f"{' '.join(cmd)}\nexit status {p.returncode} (pass is {IRVMM_PASS}); output tail:\n"
                 f"{out[-2000:]}\nstderr tail:\n{err[-2000:]}")
    details = dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
    return details, out, err


def trapped_counts(stderr):
    """{'BAR0@0x0': N, ...} from the trapped-access line ({} for `none`); exits without one."""
    m = TRAPPED_RE.search(stderr)
    if not m:
        sys.exit("irvmm printed no 'trapped BAR accesses:' line at exit (needs RUST_LOG=info)")
    report = m.group(3).strip()
    if report == "none":
        return {}
    return {k: int(v) for k, v in (w.split("=", 1) for w in report.split() if "=" in w)}


def irqfd_msix(stderr):
    """The MSI-X irqfd line's counts as a dict; exits without one."""
    m = IRQFD_RE.search(stderr)
    if not m or "MSI-X" not in m.group(1):
        sys.exit("irvmm printed no 'irqfd vectors ... MSI-X:' line at exit (needs RUST_LOG=info)")
    keys = ["vectors", "enabled", "in_kvm", "postable", "by_vmm", "blocked"]
    return dict(zip(keys, (int(g) for g in m.groups()[1:])))


def router_counters(stderr):
    """The interrupt router's exit counters as a dict; exits without the line."""
    m = ROUTER_RE.search(stderr)
    if not m:
        sys.exit("irvmm printed no 'interrupt router:' line at exit (needs RUST_LOG=info)")
    return {k: int(v) for k, v in (w.split("=") for w in m.group(1).split())}


def median(values):
    return statistics.median(values)


def spread(values, fmt="{:.1f}"):
    """`min-max` of values."""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"
