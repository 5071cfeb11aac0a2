"""Interface offload features (``ethtool -k`` / ``-K``) that revnat64 may switch.

One feature matters to the translator: UDP GRO for forwarded traffic
(``rx-udp-gro-forwarding``, NETIF_F_GRO_UDP_FWD, Linux 5.12+).  With it, and
with GRO itself on, the kernel merges a burst of same-sized datagrams of one
flow arriving on an interface into one UDP super-packet, forwards it whole
and hands it to the TUN as ``GSO_UDP_L4`` (the TUN accepts it because
revnat64 enables USO there).  One translation then covers up to 64
datagrams.  Real NICs have GRO on by default; UDP GRO forwarding is off
by default everywhere.

This runs the ``ethtool`` program (every distribution packages it), so the
feature names here are exactly the ones ``ethtool -k`` prints and users type
into ``ethtool -K``, and the daemon's changes can be checked and undone by
hand with the same tool.
"""

from __future__ import annotations

import shutil
import subprocess

GRO = "generic-receive-offload"
UDP_GRO_FORWARDING = "rx-udp-gro-forwarding"
GRO_FORWARDING_FEATURES = (GRO, UDP_GRO_FORWARDING)


class EthtoolError(RuntimeError):
    """Reading or changing a feature failed; the message names the interface and feature."""


def _ethtool() -> str:
    path = shutil.which("ethtool")
    if path is None:
        raise EthtoolError(
            "the ethtool program is not installed (it is needed to switch interface "
            "features for translator.udp_gro_forwarding): install ethtool, or set "
            "translator.udp_gro_forwarding: false"
        )
    return path


def read_features(ifname: str) -> dict[str, tuple[str, bool]]:
    """``{feature: ("on"|"off", fixed)}`` as ``ethtool -k ifname`` reports them."""
    proc = subprocess.run(
        [_ethtool(), "-k", ifname], capture_output=True, text=True, timeout=10, check=False
    )
    if proc.returncode != 0:
        raise EthtoolError(f"reading features of {ifname}: {proc.stderr.strip() or proc.stdout}")
    found: dict[str, tuple[str, bool]] = {}
    for line in proc.stdout.splitlines():
        name, sep, rest = line.strip().partition(":")
        words = rest.split()
        if sep and words and words[0] in ("on", "off"):
            found[name] = (words[0], "[fixed]" in rest)
    return found


def set_feature(ifname: str, feature: str, value: str) -> None:
    """``ethtool -K ifname feature value``; EthtoolError says what and where."""
    proc = subprocess.run(
        [_ethtool(), "-K", ifname, feature, value],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise EthtoolError(f"setting {feature} {value} on {ifname}: {detail}")
