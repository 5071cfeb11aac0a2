"""Thousands of routes and proxy NDP entries through the batched netlink path, in the kernel.

The manager runs in a namespace with a TUN device and a WAN veth
(``tests/integration/netlink_driver.py``); after each step the test reads
the kernel's tables with ``ip`` and compares them, entry for entry, with
what it asked for and with the state file the manager keeps for crash
recovery.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import Lab, Netns

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "integration" / "netlink_driver.py"
COUNT = 3000
FOREIGN = "2001:db8:f00::7d0/128"  # 2000th route, sorted into the middle of the batch


def routes(count: int, start: int = 1) -> list[str]:
    return [f"2001:db8:f00::{i:x}/128" for i in range(start, start + count)]


def proxies(count: int, start: int = 1) -> list[list[str]]:
    return [[f"2001:db8:1::1:{i:x}", "wan0"] for i in range(start, start + count)]


class Router:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.tmp = tmp
        self.ns: Netns = lab.netns("router")
        peer = lab.netns("peer")
        lab.veth(self.ns, "wan0", peer, "wan0")
        self.ns.sysctl("net.ipv6.conf.all.accept_dad", 0)
        self.ns.run("ip -6 addr add 2001:db8:1::1/64 dev wan0 nodad")
        self.tun = f"rn64{lab.uid}"[:15]
        self.make_tun()
        self.state = tmp / "netstate.json"

    def make_tun(self) -> None:
        self.ns.run(f"ip tuntap add mode tun name {self.tun}")
        self.ns.run(f"ip link set {self.tun} up")

    def manager(self, command: str, **plan: Any) -> dict[str, Any]:
        spec = self.tmp / "spec.json"
        spec.write_text(json.dumps({"tun": self.tun, "state": str(self.state), **plan}))
        out = self.ns.run([sys.executable, str(DRIVER), command, str(spec)], timeout=120)
        result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
        if result["saved"] is not None:
            saved = json.loads(result["saved"])
            # The file a crash would leave is exactly the state in memory.
            assert saved["routes"] == result["routes"]
            assert sorted(saved["proxies"]) == result["proxies"]
        return result

    def kernel_routes(self, proto: str = "164") -> list[str]:
        out = self.ns.run(f"ip -6 route show proto {proto}").stdout
        return sorted(f"{line.split()[0]}/128" if "/" not in line.split()[0] else line.split()[0]
                      for line in out.splitlines())  # fmt: skip

    def kernel_proxies(self) -> list[list[str]]:
        out = self.ns.run("ip -6 neigh show proxy").stdout
        found = []
        for line in out.splitlines():
            fields = line.split()
            assert fields[1] == "dev" and fields[3] == "proxy", line
            found.append([fields[0], fields[2]])
        return sorted(found)

    def proxy_ndp(self) -> str:
        return self.ns.run("sysctl -n net.ipv6.conf.wan0.proxy_ndp").stdout.strip()


@pytest.fixture
def router(lab: Lab, tmp_path: Path) -> Router:
    return Router(lab, tmp_path)


def test_thousands_of_routes_and_proxies_apply_change_and_go(router: Router) -> None:
    want_routes, want_proxies = routes(COUNT), proxies(COUNT)
    result = router.manager("apply", routes=want_routes, proxies=want_proxies)
    assert result["error"] is None
    assert router.kernel_routes() == sorted(want_routes) == result["routes"]
    assert router.kernel_proxies() == sorted(want_proxies) == result["proxies"]
    assert router.proxy_ndp() == "1"

    # A reload: a thousand go, five hundred come.
    new_routes = routes(COUNT - 1000, start=1001) + routes(500, start=COUNT + 1)
    new_proxies = proxies(COUNT - 1000, start=1001) + proxies(500, start=COUNT + 1)
    result = router.manager("apply", routes=new_routes, proxies=new_proxies)
    assert result["error"] is None
    assert router.kernel_routes() == sorted(new_routes) == result["routes"]
    assert router.kernel_proxies() == sorted(new_proxies) == result["proxies"]

    result = router.manager("teardown")
    assert result["routes"] == [] and result["proxies"] == [] and result["saved"] is None
    assert router.kernel_routes() == [] and router.kernel_proxies() == []
    assert router.proxy_ndp() == "0"


def test_conflicting_route_in_the_middle_is_named_and_everything_cleans_up(
    router: Router,
) -> None:
    router.ns.run(f"ip -6 route add {FOREIGN} dev wan0 proto static")
    want_routes, want_proxies = routes(COUNT), proxies(COUNT)
    assert FOREIGN in want_routes
    result = router.manager("apply", routes=want_routes, proxies=want_proxies)
    error = result["error"]
    assert error is not None
    assert f"add route {FOREIGN} dev {router.tun}: File exists" in error
    assert "did not make" in error and "further changes not attempted" in error
    # What the manager claims is exactly what it made: not the foreign route,
    # not the requests after the failing chunk, and nothing it made is unclaimed.
    assert FOREIGN not in result["routes"]
    assert router.kernel_routes() == result["routes"]
    assert 0 < len(result["routes"]) < COUNT - 1
    assert router.kernel_proxies() == result["proxies"] == []
    assert router.kernel_routes("static") == [FOREIGN]

    # The next start undoes the half-applied run from its state file...
    result = router.manager("recover")
    assert result["routes"] == [] and result["proxies"] == [] and result["sysctls"] == {}
    assert router.kernel_routes() == [] and router.kernel_proxies() == []
    assert router.proxy_ndp() == "0"
    assert router.kernel_routes("static") == [FOREIGN]

    # ... and so does a stop.
    router.make_tun()  # the start removed the stale one and makes its own
    result = router.manager("apply", routes=want_routes, proxies=want_proxies)
    assert FOREIGN in result["error"] and router.kernel_routes() == result["routes"] != []
    result = router.manager("teardown")
    assert router.kernel_routes() == [] and router.kernel_proxies() == []
    assert router.kernel_routes("static") == [FOREIGN]
    assert router.proxy_ndp() == "0"

    # With the conflict gone, the same plan applies in full.
    router.ns.run(f"ip -6 route del {FOREIGN} dev wan0 proto static")
    result = router.manager("apply", routes=want_routes, proxies=want_proxies)
    assert result["error"] is None
    assert router.kernel_routes() == sorted(want_routes) == result["routes"]
    assert router.kernel_proxies() == sorted(want_proxies) == result["proxies"]
    router.manager("teardown")
    assert router.kernel_routes() == [] and router.kernel_proxies() == []
