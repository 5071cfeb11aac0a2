"""The worker's heap settings: super-packet-sized buffers must not fault pages in.

glibc raises its trim and mmap thresholds on its own once the process has
freed a large mmap-ed block, which a process that compiles its modules from
source happens to do at start-up and one that loads .pyc files may not. With
the static defaults (128 KiB), every 64 KiB super-packet copy that reaches the
heap top shrinks and regrows it: the cause of a 25-45% TCP throughput
difference between otherwise identical runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The pattern runs in a new thread: glibc gives it a fresh arena with no
# holes left by imports, so the buffers reach the arena's top as they do in
# a worker whose packet path has been running for a while; in the main heap
# the outcome depends on what start-up left behind (that was the bug).
PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys, threading
    sys.path.insert(0, {root!r})
    from publisher.worker import trim_memory
    libc = ctypes.CDLL("libc.so.6")
    # Start from glibc's documented static defaults, whatever start-up did.
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    if {packet_heap!r}:
        trim_memory(packet_heap=True)
    data = bytes(60000)
    faults = []

    def one_packet():  # the copies the vnet loop makes of one super-packet
        pkt = data[10:]
        pkt = pkt[:100] + pkt[100:]
        out = pkt + b"x"
        return len(out)

    def run():
        for _ in range(50):
            one_packet()
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(2000):
            one_packet()
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    print(faults[0])
    """
)


def minor_faults(packet_heap: bool) -> int:
    code = PROBE.format(root=str(ROOT), packet_heap=packet_heap)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_packet_heap_keeps_super_packet_buffers_resident() -> None:
    assert minor_faults(packet_heap=True) < 100


def test_static_default_thresholds_fault_on_every_super_packet() -> None:
    # The control: the probe does see the churn the worker's setting prevents.
    assert minor_faults(packet_heap=False) > 2000 * 10
