"""The two real iptables variants, for the iptables backend's tests.

Debian's ``iptables`` is iptables-nft (rules in nftables); Asuswrt-Merlin's is
iptables-legacy (the kernel's own xtables).  The backend runs the tools by
their plain names, so a test picks a variant by putting a directory first in
PATH in which those names lead to the variant's binaries, as on a router that
has only that variant.
"""

from __future__ import annotations

import shutil
from pathlib import Path

VARIANTS = ("nft", "legacy")
# What `iptables -V` says for each variant.
VERSION_MARK = {"nft": "(nf_tables)", "legacy": "(legacy)"}
TOOLS = [f"{t}{s}" for t in ("iptables", "ip6tables") for s in ("", "-save", "-restore")]


def variant_bin_dir(parent: Path, variant: str) -> Path:
    """A directory of ``iptables``, ``iptables-save`` ... links to ``variant``'s tools."""
    bin_dir = parent / f"iptables-{variant}"
    bin_dir.mkdir()
    for tool in TOOLS:
        name, _, suffix = tool.partition("-")
        real = shutil.which(f"{name}-{variant}" + (f"-{suffix}" if suffix else ""))
        assert real, f"{name}-{variant} is missing (apt install iptables)"
        (bin_dir / tool).symlink_to(real)
    return bin_dir
