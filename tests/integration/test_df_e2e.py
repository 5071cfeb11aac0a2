"""DF and Identification of TCP segments cut from a translated super-packet.

A client behind a 1280-byte link sends TCP segments whose translations are
at most 1260 bytes, which RFC 7915 §5.1 sends with DF clear (IPv4 routers may
fragment them) and, being non-atomic, with an Identification each (RFC 6864
§4.2). With TSO the worker translates super-packets, and the core sets DF on
the large packet it sees; the data path must give the segments what each
would have had alone. The device's raw socket sees every segment's header.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, TCP

from tests.integration.daemon_lab import DaemonLab
from tests.integration.test_daemon_e2e import assert_no_checksum_errors
from tests.netlab import DEVICE4, DEVICE6, Lab

pytestmark = pytest.mark.integration

SIZE = 300_000
PORT = 9300

SINK = (
    "import json, socket, threading\n"
    "raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)\n"
    "raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23); raw.settimeout(3)\n"
    "srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
    f"srv.bind(('0.0.0.0', {PORT})); srv.listen(1)\n"
    "got = []\n"
    "def serve():\n"
    "    conn, _ = srv.accept()\n"
    "    while True:\n"
    "        data = conn.recv(1 << 16)\n"
    "        if not data: break\n"
    "        got.append(data)\n"
    "threading.Thread(target=serve, daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "headers = []\n"
    "while True:\n"
    "    try:\n"
    "        pkt = raw.recv(65535)\n"
    "    except socket.timeout:\n"
    "        break\n"
    f"    if pkt[22:24] == ({PORT}).to_bytes(2, 'big'):\n"
    "        headers.append(pkt[:60].hex() + ':' + str(len(pkt)))\n"
    "print(json.dumps([len(b''.join(got)), headers]), flush=True)\n"
)

SENDER = (
    "import socket\n"
    "s = socket.create_connection(('" + DEVICE6 + f"', {PORT}))\n"
    f"s.sendall(bytes(range(256)) * ({SIZE} // 256))\n"
    "s.close()\n"
)


def test_tcp_segments_after_a_1280_link_leave_with_df_clear_and_own_ids(lab: Lab, tmp_path) -> None:
    d = DaemonLab(lab, tmp_path, wan_mtu=1280)
    try:
        d.start()
        assert "tso4" in d.logs()
        tun_dump = d.router.popen(
            ["tcpdump", "-i", d.tun, "-nn", "-l", "--immediate-mode", f"tcp port {PORT}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        sink = d.device.popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE)
        try:
            assert sink.stdout is not None
            assert sink.stdout.readline().strip() == b"ready"
            time.sleep(0.5)
            d.client.run([sys.executable, "-c", SENDER], timeout=60)
            received, headers = json.loads(sink.communicate(timeout=30)[0])
        finally:
            sink.kill()
            tun_dump.terminate()
        tun_lines = tun_dump.communicate(timeout=10)[0].decode(errors="replace")
        assert_no_checksum_errors(d)  # strict checksum lab: the device verified them all
    finally:
        d.close()
    assert received == SIZE // 256 * 256
    # Super-packets did cross the TUN towards the device (lengths beyond one segment).
    lengths = [
        int(n) for n in re.findall(rf"> {re.escape(DEVICE4)}\.{PORT}: .* length (\d+)", tun_lines)
    ]
    assert lengths and max(lengths) > 1260, lengths[:20]
    data = []
    for entry in headers:
        head, size = entry.split(":")
        ip = IP(bytes.fromhex(head))
        if int(size) > 20 + ip[TCP].dataofs * 4:
            data.append((ip, int(size)))
    assert len(data) >= SIZE // 1220
    for ip, size in data:
        assert size <= 1260
        assert not ip.flags.DF, (ip.id, size)
    ids = [ip.id for ip, _ in data]
    assert len(set(ids)) == len(ids)  # no Identification reused among the data segments
