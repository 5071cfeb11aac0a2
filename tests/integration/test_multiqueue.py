"""``translator.workers: 2``: a multi-queue TUN, one worker per queue, one lease table.

The real daemon in the router namespace, real traffic from the client
namespace.  A client's flows (different source ports) hash to both queues;
the tests check that both workers really translate, that the device sees one
pool4 address for the client on every flow, that replies come back intact and
in order per flow, and that the status counters are the sum over the workers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.daemon import peek_workers
from publisher.snapshot import Snapshot
from tests.integration.daemon_lab import DaemonLab, base_config
from tests.integration.test_daemon_e2e import (
    _router_state,
    assert_no_checksum_errors,
    download_sha,
    serve_http,
)
from tests.netlab import CLIENT6, DEVICE6, Lab, wait_for

pytestmark = pytest.mark.integration

FLOWS = 48

# Opens FLOWS sockets (one source port each), sends WHO on all of them at once,
# retries the silent ones, prints {port: address the device saw}.
WHO_ON_MANY_FLOWS = f"""
import json, select, socket, time
socks = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range({FLOWS})]
seen = {{}}
for attempt in range(5):
    for s in socks:
        if s.getsockname()[1] not in seen:
            s.sendto(b"WHO", ("{DEVICE6}", 7))
    deadline = time.monotonic() + 1.0
    while len(seen) < len(socks) and time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.2)
        for s in ready:
            seen[s.getsockname()[1]] = s.recv(100).decode()
    if len(seen) == len(socks):
        break
print(json.dumps(seen))
"""

# FLOWS/6 UDP flows, each sending COUNT numbered datagrams in lock-step bursts;
# prints, per flow, the sequence numbers as they came back from the echo server.
NUMBERED_STREAMS = f"""
import json, select, socket, struct, time
flows, count = {FLOWS // 6}, 400
socks = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(flows)]
for s in socks:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
got = [[] for _ in socks]
for burst in range(0, count, 20):
    for n in range(burst, burst + 20):
        for s in socks:
            s.sendto(struct.pack("!I", n) + bytes(100), ("{DEVICE6}", 7))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.05)
        if not ready and all(g and g[-1] >= burst + 19 for g in got):
            break
        for s in ready:
            got[socks.index(s)].append(struct.unpack("!I", s.recv(200)[:4])[0])
print(json.dumps(got))
"""


@pytest.fixture
def mq(lab: Lab, tmp_path: Path) -> Iterator[DaemonLab]:
    d = DaemonLab(lab, tmp_path)
    cfg = base_config(tmp_path, d.tun)
    cfg["translator"]["workers"] = 2
    d.write_config(cfg)
    try:
        yield d
    finally:
        d.close()


def worker_pids(d: DaemonLab) -> list[int]:
    assert d.proc is not None
    text = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text()
    return sorted(int(p) for p in text.split())


def rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar for {pid}")


def status(d: DaemonLab) -> Snapshot:
    out = d.router.run(
        [sys.executable, "-m", "publisher.cli", "status", "--json", "-c", str(d.config_path)]
    )
    return Snapshot.from_json(out.stdout)


def test_peek_workers_reads_only_the_translator_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mappings: [{workers: 9}]\ntranslator:\n  mtu: 1500\n  workers: 3\n")
    assert peek_workers(str(path)) == 3
    path.write_text("translator:\n  mtu: 1500\nworkers: 4\n")
    assert peek_workers(str(path)) == 1
    path.write_text("translator: [\n")
    assert peek_workers(str(path)) == 1
    path.write_text("translator:\n  workers: 1000\n")
    assert peek_workers(str(path)) == 1  # out of range: the real load reports it


def test_two_workers_one_lease_per_client_and_summed_counters(mq: DaemonLab) -> None:
    mq.start()
    # The TUN has two queues, each served by its own worker process.
    link = mq.router.run(["ip", "-d", "link", "show", mq.tun]).stdout
    assert "multi_queue" in link and "numqueues 2" in link, link
    queues = mq.router.run(["ls", f"/sys/class/net/{mq.tun}/queues"]).stdout.split()
    assert sorted(q for q in queues if q.startswith("tx-")) == ["tx-0", "tx-1"], queues
    pids = worker_pids(mq)
    assert len(pids) == 2
    mq.start_udp_echo()
    before_status = status(mq)
    assert before_status.workers == 2
    before = {pid: rchar(pid) for pid in pids}

    out = mq.client.run([sys.executable, "-c", WHO_ON_MANY_FLOWS], timeout=30).stdout
    seen = json.loads(out)
    assert len(seen) == FLOWS, seen
    addresses = set(seen.values())
    assert len(addresses) == 1, seen  # one pool4 address, whichever worker leased it
    address = addresses.pop()
    assert address.startswith("198.51.100.") and address != "198.51.100.1"

    # Both workers read packets from their queue (rchar counts bytes read).
    grew = {pid: rchar(pid) - before[pid] for pid in pids}
    assert all(n > 20 * 40 for n in grew.values()), grew

    after = status(mq)
    assert after.workers == 2
    sent = after.packets[("camera", "6to4")] - before_status.packets.get(("camera", "6to4"), 0)
    back = after.packets[("camera", "4to6")] - before_status.packets.get(("camera", "4to6"), 0)
    # Every WHO the device answered went through once each way (retries included:
    # the sum over workers counts each datagram exactly once).
    assert sent >= FLOWS and back >= FLOWS and sent == back, (sent, back)
    assert after.pool_in_use == 1 and after.leases_created == 1, after
    assert [(c, a) for c, a, _ in after.leases] == [(CLIENT6, address)]
    assert after.pool_size == 253
    assert_no_checksum_errors(mq)


def test_two_workers_keep_order_per_flow_and_bulk_data_intact(mq: DaemonLab) -> None:
    mq.start()
    mq.start_udp_echo()
    expected = serve_http(mq, 2 * 1024 * 1024)
    downloads = [
        mq.client.popen(
            ["sh", "-c", f"curl -sf -g --max-time 60 'http://[{DEVICE6}]:8080/blob' | sha256sum"]
        )
        for _ in range(3)
    ]
    out = mq.client.run([sys.executable, "-c", NUMBERED_STREAMS], timeout=120).stdout
    for proc in downloads:
        stdout, _ = proc.communicate(timeout=90)
        assert stdout.decode().split()[0] == expected
    assert download_sha(mq, f"http://[{DEVICE6}]:8080/blob") == expected
    flows = json.loads(out)
    for numbers in flows:
        assert len(numbers) >= 200, f"most datagrams should come back: {len(numbers)}"
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
    assert_no_checksum_errors(mq)


def test_two_workers_sigterm_saves_leases_and_removes_everything(mq: DaemonLab) -> None:
    before = _router_state(mq)
    mq.start()
    mq.start_udp_echo()
    assert mq.udp_echo(64, count=4) == 4
    assert _router_state(mq)["links"] == 1
    assert mq.stop() == 0
    assert _router_state(mq) == before
    saved = json.loads((mq.tmp / "state" / "leases.json").read_text())
    assert [le["ipv6"] for le in saved["leases"]] == [CLIENT6]


def test_a_dying_worker_stops_the_daemon_with_an_error(mq: DaemonLab) -> None:
    before = _router_state(mq)
    mq.start()
    victim = worker_pids(mq)[1]
    os.kill(victim, signal.SIGKILL)
    assert mq.proc is not None
    assert mq.proc.wait(timeout=15) == 1
    assert "data-plane worker 1" in mq.logs() and "died" in mq.logs()
    wait_for(lambda: _router_state(mq) == before, timeout=5, what="the cleanup")
