"""Real DNS servers for tests: BIND ``named`` with dynamic zones, and ``dnsmasq``.

Each server runs in its own temporary directory on 127.0.0.1 and a free port,
in the foreground, and is killed by the context manager's exit on every path.
Waiting for readiness is a bounded poll for an answer, not a sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

ZONE = "cam.example.org."
# 2001:db8:200::/48 in nibble form (RFC 3596 section 2.5).
REVERSE_ZONE = "0.0.2.0.8.b.d.0.1.0.0.2.ip6.arpa."
KEY_NAME = "revnat64-test"
READY_TIMEOUT = 30.0

FORWARD_ZONE_TEXT = """\
$TTL 300
@        IN SOA ns1.cam.example.org. hostmaster.cam.example.org. 1 3600 600 86400 300
@        IN NS  ns1.cam.example.org.
ns1      IN A   192.0.2.53
printer  IN AAAA 2001:db8:200::99
"""

REVERSE_ZONE_TEXT = """\
$TTL 300
@        IN SOA ns1.cam.example.org. hostmaster.cam.example.org. 1 3600 600 86400 300
@        IN NS  ns1.cam.example.org.
"""


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1 for both UDP and TCP")


def tsig_keygen(name: str, path: Path, algorithm: str = "hmac-sha256") -> Path:
    """Write a fresh key with BIND's own tsig-keygen, mode 0600."""
    out = subprocess.run(
        ["tsig-keygen", "-a", algorithm, name], capture_output=True, text=True, check=True
    ).stdout
    path.write_text(out)
    path.chmod(0o600)
    return path


def wait_for_answer(
    proc: subprocess.Popen[bytes], port: int, qname: str, rtype: str, log: Path
) -> None:
    """Poll until the server answers ``qname``/``rtype`` with NOERROR (bounded)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            r = dns.query.udp(dns.message.make_query(qname, rtype), "127.0.0.1", 0.5, port=port)
            if r.rcode() == dns.rcode.NOERROR and r.answer:
                return
        except (dns.exception.Timeout, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(
        f"server did not answer {qname} {rtype} within {READY_TIMEOUT} s:\n{log.read_text()}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Named:
    """A running named: where it listens, its key file and its work directory."""

    port: int
    key_file: Path
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def query(self, name: str, rtype: str) -> dns.message.Message:
        return dns.query.tcp(dns.message.make_query(name, rtype), "127.0.0.1", 5, port=self.port)

    def rrset(self, name: str, rtype: str) -> set[str]:
        """The values the server holds for name/rtype (empty set when none)."""
        out: set[str] = set()
        for rrset in self.query(name, rtype).answer:
            if rrset.rdtype == dns.rdatatype.from_text(rtype):
                out |= {rd.to_text() for rd in rrset}
        return out

    def serial(self, zone: str = ZONE) -> int:
        (rrset,) = self.query(zone, "SOA").answer
        return int(rrset[0].serial)


@contextmanager
def running_named(extra_zone_text: str = "", *, reverse: str = "updatable") -> Iterator[Named]:
    """named with a forward and a reverse zone, both updatable with one TSIG key.

    The update-policy is the narrow one docs/dns.md recommends (AAAA and TXT in
    the forward zone, PTR in the reverse zone), so the tests prove it suffices.
    ``reverse="none"`` leaves the reverse zone out, as on a server that does not
    serve the ip6.arpa zone; ``reverse="read-only"`` serves it but refuses
    updates to it, as a secondary or a zone without an update-policy would.
    """
    if reverse not in ("updatable", "read-only", "none"):
        raise ValueError(f"reverse must be updatable, read-only or none, not {reverse!r}")
    with tempfile.TemporaryDirectory(prefix=f"rn64-named-{os.getpid()}-") as tmp:
        d = Path(tmp)
        key_file = tsig_keygen(KEY_NAME, d / "tsig.key")
        (d / "forward.db").write_text(FORWARD_ZONE_TEXT + extra_zone_text)
        (d / "reverse.db").write_text(REVERSE_ZONE_TEXT)
        port = free_port()
        grant = f"grant {KEY_NAME} subdomain {REVERSE_ZONE} PTR;"
        policy = f"update-policy {{ {grant} }};" if reverse == "updatable" else ""
        reverse_zone = f"""
zone "{REVERSE_ZONE}" {{
    type primary;
    file "{d}/reverse.db";
    {policy}
}};
"""
        conf = d / "named.conf"
        conf.write_text(
            f"""
include "{key_file}";
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{ZONE}" {{
    type primary;
    file "{d}/forward.db";
    update-policy {{ grant {KEY_NAME} subdomain {ZONE} AAAA TXT; }};
}};
{reverse_zone if reverse != "none" else ""}"""
        )
        log = d / "named.log"
        with open(log, "wb") as log_fd:
            proc = subprocess.Popen(
                ["/usr/sbin/named", "-g", "-c", str(conf), "-p", str(port), "-n", "1"],
                stdout=log_fd,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_answer(proc, port, ZONE, "SOA", log)
            yield Named(port, key_file, d, proc)
        finally:
            stop(proc)


@contextmanager
def running_dnsmasq(conf_lines: Sequence[str]) -> Iterator[int]:
    """dnsmasq answering only from ``conf_lines``; yields its port."""
    with tempfile.TemporaryDirectory(prefix=f"rn64-dnsmasq-{os.getpid()}-") as tmp:
        d = Path(tmp)
        conf = d / "dnsmasq.conf"
        conf.write_text("\n".join(conf_lines) + "\n")
        port = free_port()
        log = d / "dnsmasq.log"
        with open(log, "wb") as log_fd:
            proc = subprocess.Popen(
                [
                    "dnsmasq", "--no-daemon", f"--conf-file={conf}", f"--port={port}",
                    "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                    "--no-hosts", f"--pid-file={d}/dnsmasq.pid", "--user=root",
                ],
                stdout=log_fd,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            yield_first = _first_host_record(conf_lines)
            wait_for_answer(proc, port, yield_first, "AAAA", log)
            yield port
        finally:
            stop(proc)


def _first_host_record(lines: Sequence[str]) -> str:
    for line in lines:
        if line.startswith("host-record="):
            return line.split("=", 1)[1].split(",", 1)[0] + "."
    raise ValueError("no host-record line to wait for")


@contextmanager
def running_unbound(conf_text: str, ready_name: str) -> Iterator[int]:
    """unbound serving the local data in ``conf_text`` (a server: clause); yields its port.

    ``unbound-checkconf`` validates the whole config first, so a syntax error in
    the include fails with unbound's own message.
    """
    with tempfile.TemporaryDirectory(prefix=f"rn64-unbound-{os.getpid()}-") as tmp:
        d = Path(tmp)
        port = free_port()
        include = d / "revnat64.conf"
        include.write_text(conf_text)
        conf = d / "unbound.conf"
        conf.write_text(
            f"""server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    do-daemonize: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
include: "{include}"
"""
        )
        check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(
                f"unbound-checkconf rejected the config:\n{check.stdout}{check.stderr}"
            )
        log = d / "unbound.log"
        with open(log, "wb") as log_fd:
            proc = subprocess.Popen(
                ["unbound", "-d", "-c", str(conf)], stdout=log_fd, stderr=subprocess.STDOUT
            )
        try:
            wait_for_answer(proc, port, ready_name, "AAAA", log)
            yield port
        finally:
            stop(proc)


BASE_MAPPINGS = """\
  - name: frontdoor-cam
    ipv6: 2001:db8:200::50
    ipv4: 192.0.2.50
    allow: [tcp/80]
    hostname: frontdoor
  - name: nas
    ipv6: 2001:db8:200::51
    ipv4: 192.0.2.51
    allow: [tcp/443]
  - name: lab
    ipv6: 2001:db8:200:1::/126
    ipv4: 192.0.2.252/30
    allow: [icmp]
"""


def config_text(
    mappings: str = BASE_MAPPINGS,
    server: str | None = "127.0.0.1:53",
    key_file: Path | str | None = None,
    resolver: str | None = None,
    ptr: bool = False,
) -> str:
    """A valid revnat64 config around ``mappings`` with a dns section for the test servers."""
    dns_lines = ["  zone: cam.example.org.", "  ttl: 300", f"  ptr: {'true' if ptr else 'false'}"]
    if server:
        dns_lines.append(f"  server: {server}")
    if key_file:
        dns_lines.append(f"  tsig_key_file: {key_file}")
    if resolver:
        dns_lines.append(f"  resolver: {resolver}")
    return (
        "translator:\n"
        "  ipv4_address: 198.51.100.1\n"
        "  ipv6_address: 2001:db8:200::1\n"
        "  pool4: 198.51.100.0/24\n"
        "wan: {interface: eth0}\n"
        "lan: {interface: br-lan, ipv4_networks: [192.0.2.0/24]}\n"
        "mappings:\n" + mappings + "dns:\n" + "\n".join(dns_lines) + "\n"
    )
