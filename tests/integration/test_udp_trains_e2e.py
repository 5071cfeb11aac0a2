"""UDP trains: queued same-flow datagrams leave the worker as one USO write.

The worker is stopped (SIGSTOP) while the client sends a burst of separate
64-byte datagrams, so they wait in the TUN's queue; after SIGCONT the worker
finds them queued together and merges runs of them (offload.udp_train_key).
Strict checksum mode is on, so the kernel completes every datagram's checksum
in software from the seed the worker wrote and the device verifies it. A
capture on the device checks what RFC 7915 asks of each datagram as if it had
been translated alone: DF clear (<= 1260 bytes) and an Identification of its
own; plus order and content.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP

from tests.integration.daemon_lab import DaemonLab
from tests.integration.test_daemon_e2e import assert_no_checksum_errors
from tests.integration.test_uso_e2e import udp_lengths_on_tun
from tests.netlab import DEVICE4, DEVICE6

pytestmark = pytest.mark.integration

BURST = 300  # below the TUN's 500-packet queue
SIZE = 64

# The sink reads the datagrams through a raw socket too, to see their IPv4
# headers: the UDP socket makes the kernel verify each checksum (nstat).
SINK = (
    "import json, socket, sys\n"
    "raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)\n"
    "raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22); raw.settimeout(5)\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)\n"
    "s.bind(('0.0.0.0', 9200))\n"
    "print('ready', flush=True)\n"
    "seen = []\n"
    "while len(seen) < int(sys.argv[1]):\n"
    "    try:\n"
    "        pkt = raw.recv(2048)\n"
    "    except socket.timeout:\n"
    "        break\n"
    "    if pkt[22:24] == (9200).to_bytes(2, 'big'):\n"
    "        seen.append(pkt.hex())\n"
    "print(json.dumps(seen), flush=True)\n"
)

SENDER = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)\n"
    f"s.connect(('{DEVICE6}', 9200))\n"
    "for i in range(int(sys.argv[1])):\n"
    "    s.send(i.to_bytes(4, 'big') * (int(sys.argv[2]) // 4))\n"
)


def worker_pid(d: DaemonLab) -> int:
    assert d.proc is not None
    children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def queued_burst(d: DaemonLab, count: int, size: int = SIZE) -> None:
    """Send ``count`` datagrams while the worker is stopped, then let it run."""
    pid = worker_pid(d)
    os.kill(pid, signal.SIGSTOP)
    try:
        d.client.run([sys.executable, "-c", SENDER, str(count), str(size)], timeout=30)
        time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("size", [SIZE, 1200])  # 1200: QUIC; 64 of them exceed 64 KiB
def test_a_queued_burst_is_merged_and_every_datagram_arrives_as_if_alone(
    dlab: DaemonLab, size: int
) -> None:
    dlab.start()
    assert "uso4" in dlab.logs()
    sink = dlab.device.popen([sys.executable, "-c", SINK, str(BURST)], stdout=subprocess.PIPE)
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == b"ready"
        lengths = udp_lengths_on_tun(dlab, lambda: queued_burst(dlab, BURST, size), towards=DEVICE4)
        seen = json.loads(sink.communicate(timeout=30)[0])
    finally:
        sink.kill()
    # Merged: the worker wrote super-packets towards the device, not 300 datagrams.
    assert max(lengths) > size and len(lengths) < BURST // 4, lengths
    assert max(lengths) <= 65535 - 20  # a UDP length, on the TUN's IPv4 side
    packets = [IP(bytes.fromhex(h)) for h in seen]
    assert [bytes(p[UDP].payload) for p in packets] == [
        i.to_bytes(4, "big") * (size // 4) for i in range(BURST)
    ]  # all there, in order, intact
    assert len({p[IP].id for p in packets}) == BURST  # one Identification per datagram
    for p in packets:
        assert p[IP].src == packets[0][IP].src and p[IP].dst == DEVICE4
        assert not p[IP].flags.DF and p[IP].frag == 0  # RFC 7915 §5.1: <= 1260 bytes
        rebuilt = p.copy()
        del rebuilt[IP].chksum, rebuilt[UDP].chksum
        rebuilt = IP(bytes(rebuilt))
        assert (p[IP].chksum, p[UDP].chksum) == (rebuilt[IP].chksum, rebuilt[UDP].chksum)
    assert_no_checksum_errors(dlab)


def test_datagrams_of_two_flows_interleaved_all_arrive(dlab: DaemonLab) -> None:
    # Alternating flows end every train after one datagram: the single path.
    dlab.start()
    each = 200  # two flows: together still below the TUN's 500-packet queue
    sink = dlab.device.popen([sys.executable, "-c", SINK, str(each)], stdout=subprocess.PIPE)
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == b"ready"
        other = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            f"s.connect(('{DEVICE6}', 9201))\n"
            f"for i in range({each}): s.send(b'x' * 64)\n"
        )
        pid = worker_pid(dlab)
        os.kill(pid, signal.SIGSTOP)
        try:
            both = [
                dlab.client.popen([sys.executable, "-c", SENDER, str(each), str(SIZE)]),
                dlab.client.popen([sys.executable, "-c", other]),
            ]
            for p in both:
                assert p.wait(timeout=30) == 0
            time.sleep(0.2)
        finally:
            os.kill(pid, signal.SIGCONT)
        result = json.loads(sink.communicate(timeout=30)[0])
    finally:
        sink.kill()
    got = [bytes.fromhex(h)[28:] for h in result]
    assert got == [i.to_bytes(4, "big") * 16 for i in range(each)]
    assert_no_checksum_errors(dlab)
