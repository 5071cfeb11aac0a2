"""revnat64 control plane: config, netlink, firewall, DNS, metrics and the daemon."""

__version__ = "0.1.0"
