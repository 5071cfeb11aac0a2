"""An unsigned answer to a TSIG-signed question is never believed.

Depending on dnspython's version, dnspython refuses it (FormError, newer
releases) or the update code does (``had_tsig``); either way no "updated" and
no zone contents come from whoever answered without the key. The forger here
is a thread on loopback that answers once.
"""

from __future__ import annotations

import socket
import struct
import threading

import dns.message
import dns.tsig
import pytest

from publisher.dns_update import DnsUpdateError, RetryPolicy, _Server

KEY = dns.tsig.Key("revnat64.", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "hmac-sha256")


def unsigned_answerer() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                size = struct.unpack("!H", conn.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += conn.recv(size - len(data))
                answer = dns.message.make_response(dns.message.from_wire(data, keyring=KEY))
                answer.tsig = None  # "NOERROR", unsigned
                answer.keyring = None
                wire = answer.to_wire()
                conn.sendall(struct.pack("!H", len(wire)) + wire)

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_an_unsigned_answer_to_a_signed_query_is_not_believed() -> None:
    srv, port = unsigned_answerer()
    try:
        server = _Server("127.0.0.1", port, KEY, RetryPolicy(timeout=2.0, attempts=1))
        query = dns.message.make_query("cam.example.org.", "SOA")
        with pytest.raises(DnsUpdateError, match="TSIG"):
            server.exchange(query, "the SOA query")
    finally:
        srv.close()
