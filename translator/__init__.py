"""revnat64 data plane: a sans-IO stateless IP/ICMP translator (SIIT, RFC 7915)."""
