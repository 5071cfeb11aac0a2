"""Runs NetlinkManager inside a test namespace: ``python netlink_driver.py COMMAND SPEC``.

The manager reads sysctls from /proc/sys and talks netlink in the caller's
namespace, so the tests run it here, as a child started with ``ip netns
exec``.  SPEC is a JSON file: tun device, state file, and for ``apply`` the
routes and proxy entries of a NetPlan.  Prints one JSON line: the error
message (or null) and the state the manager holds afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from publisher.netlink import (  # noqa: E402
    AppliedState,
    NetlinkError,
    NetlinkManager,
    NetPlan,
    ProxyEntry,
    Route,
    proxy_ndp_sysctl,
)


def main() -> None:
    command, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    manager = NetlinkManager(spec["tun"], Path(spec["state"]))
    if command == "recover":
        # As the next start does: with the state file of the run before.
        manager.recover_leftovers()
    else:
        manager.state = (
            AppliedState.from_json(Path(spec["state"]).read_text())
            if Path(spec["state"]).exists()
            else AppliedState(tun_device=spec["tun"])
        )
    error = None
    if command == "apply":
        desired = NetPlan(
            routes=frozenset(Route(d) for d in spec["routes"]),
            proxies=frozenset(ProxyEntry(a, i) for a, i in spec["proxies"]),
            sysctls=tuple(
                (proxy_ndp_sysctl(i), "1") for i in sorted({i for _, i in spec["proxies"]})
            ),
        )
        try:
            manager.apply(desired)
        except NetlinkError as exc:
            error = str(exc)
    elif command == "teardown":
        manager.teardown(delete_tun=False)
    state = AppliedState.from_json(manager.state.to_json())
    print(
        json.dumps(
            {
                "error": error,
                "routes": sorted(r.dst for r in state.routes),
                "proxies": sorted([p.address, p.interface] for p in state.proxies),
                "sysctls": state.sysctl_originals,
                "saved": Path(spec["state"]).read_text() if Path(spec["state"]).exists() else None,
            }
        )
    )


if __name__ == "__main__":
    main()
