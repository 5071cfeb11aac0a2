"""The offload fast path with real TCP: super-packets cross the TUN, and every
segment the kernel cuts from them arrives with a valid checksum.

Strict checksum mode is on (tx off on the router's veths, rx off on the hosts),
so the kernel completes each segment's checksum in software from the seed the
translator wrote, and the receiving host verifies it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.daemon_lab import DaemonLab, base_config
from tests.integration.test_daemon_e2e import assert_no_checksum_errors, download_sha, serve_http
from tests.netlab import DEVICE6, Lab

pytestmark = pytest.mark.integration


def tun_packet_sizes(d: DaemonLab, action: object) -> list[int]:
    """IP lengths of packets seen on the TUN while ``action()`` runs."""
    cap = d.router.popen(
        ["tcpdump", "-i", d.tun, "-nn", "-l", "-q", "-c", "4000", "tcp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        action()  # type: ignore[operator]
        time.sleep(0.3)
    finally:
        cap.terminate()
        out = cap.communicate(timeout=10)[0].decode(errors="replace")
    return [int(n) for n in re.findall(r"tcp (\d+)", out)]


def test_download_uses_superpackets_and_every_segment_checksum_is_valid(
    dlab: DaemonLab,
) -> None:
    dlab.start()
    assert "TUN offloads: csum, tso4, tso6" in dlab.logs()
    expected = serve_http(dlab, 4 * 1024 * 1024)
    shas: list[str] = []
    sizes = tun_packet_sizes(
        dlab, lambda: shas.append(download_sha(dlab, f"http://[{DEVICE6}]:8080/blob"))
    )
    assert shas == [expected]
    # TCP payload lengths larger than one MTU can only be super-packets on the TUN.
    assert max(sizes) > 1500 * 4, sizes[:20]
    assert_no_checksum_errors(dlab)


def test_upload_uses_superpackets_and_keeps_order(dlab: DaemonLab) -> None:
    dlab.start()
    sink = dlab.device.popen(
        [
            sys.executable,
            "-c",
            "import socket,hashlib\n"
            "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "s.bind(('0.0.0.0',9000));s.listen(1);c,_=s.accept();h=hashlib.sha256()\n"
            "while True:\n  b=c.recv(65536)\n  if not b: break\n  h.update(b)\n"
            "c.sendall(h.hexdigest().encode());c.close()\n",
        ]
    )
    time.sleep(0.5)
    code = (
        "import os,socket,hashlib\n"
        "data=b''.join(i.to_bytes(4,'big') for i in range(1<<20))\n"  # ordered counter stream
        f"c=socket.create_connection(('{DEVICE6}',9000),timeout=30)\n"
        "c.sendall(data);c.shutdown(socket.SHUT_WR)\n"
        "print(c.recv(100).decode()==hashlib.sha256(data).hexdigest())\n"
    )
    results: list[str] = []
    sizes = tun_packet_sizes(
        dlab,
        lambda: results.append(
            dlab.client.run([sys.executable, "-c", code], timeout=60).stdout.strip()
        ),
    )
    sink.wait(timeout=10)
    assert results == ["True"]  # the SHA-256 of an ordered stream: nothing lost or reordered
    assert max(sizes) > 1500 * 4, sizes[:20]
    assert_no_checksum_errors(dlab)


def test_offloads_off_still_translates(lab: Lab, tmp_path: Path) -> None:
    d = DaemonLab(lab, tmp_path)
    try:
        cfg = base_config(tmp_path, d.tun)
        cfg["translator"]["offloads"] = False
        d.write_config(cfg)
        d.start()
        assert "TUN offloads" not in d.logs()
        expected = serve_http(d, 1024 * 1024)
        sizes = tun_packet_sizes(d, lambda: download_sha(d, f"http://[{DEVICE6}]:8080/blob"))
        assert max(sizes) <= 1500
        assert download_sha(d, f"http://[{DEVICE6}]:8080/blob") == expected
        assert_no_checksum_errors(d)
    finally:
        d.close()
