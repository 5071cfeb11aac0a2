#!/bin/sh
# Install what revnat64, its demo and its tests need on Debian/Ubuntu, as root:
# system packages from apt, Python packages into ./.venv. Safe to run again.
set -eu
cd "$(dirname "$0")/.."

APT_PACKAGES="python3 python3-venv python3-pip iproute2 nftables iptables ethtool kmod
procps iputils-ping curl socat tcpdump iperf3 tayga bind9 bind9-utils bind9-dnsutils
dnsmasq-base unbound shellcheck systemd dash util-linux coreutils"

missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup: installing apt packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# The Debian packages start these daemons; our tests run their own copies.
for svc in named bind9 unbound tayga; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }
modprobe tun 2>/dev/null || true

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# promtool, for the alert rules' unit tests: taken out of Debian's prometheus
# package, not installed, because installing it would also start a Prometheus.
if [ ! -x .venv/bin/promtool ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null \
        || { apt-get update -qq && apt-get download -qq prometheus; }; })
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
    install -m 0755 "$tmp/root/usr/bin/promtool" .venv/bin/promtool
    rm -rf "$tmp"
fi
echo "setup: ready (.venv/bin/revnat64)"
