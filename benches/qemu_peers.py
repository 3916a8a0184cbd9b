"""Where the benchmarks' QEMU 10 peer is: Debian 13's QEMU run from a chroot by the wrapper that
../shared/tools/qemu10.sh sets up (idempotent; it prints the wrapper's path last)."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU10_SETUP = os.path.join(ROOT, "..", "shared", "tools", "qemu10.sh")


def qemu10():
    """The QEMU 10 wrapper's path, or None when the set-up script is missing or fails."""
    if not os.path.exists(QEMU10_SETUP):
        return None
    p = subprocess.run([QEMU10_SETUP], capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in p.stdout.splitlines() if line.startswith("/")]
    return lines[-1] if p.returncode == 0 and lines else None
