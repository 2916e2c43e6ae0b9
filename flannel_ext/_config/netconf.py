"""net-conf.json: flannel's `pkg/subnet/config.go` ParseConfig + CheckNetworkConfig.

(Interface fixed; the parser body is filled in by the config work.)
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .._cogs.gojson import loads_case_insensitive


@dataclass
class NetConf:
    """A parsed, validated net-conf.json. Subnet bounds are filled with flannel's defaults."""

    source: str = "net-conf.json"        # file path (for error messages)
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    network: ipaddress.IPv4Network | None = None
    ipv6_network: ipaddress.IPv6Network | None = None
    subnet_len: int = 0
    subnet_min: ipaddress.IPv4Address | None = None
    subnet_max: ipaddress.IPv4Address | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: ipaddress.IPv6Address | None = None
    ipv6_subnet_max: ipaddress.IPv6Address | None = None
    backend_type: str = "udp"            # lowercased, as flannel's GetBackend does
    backend: dict[str, Any] = field(default_factory=dict)   # the raw Backend object
    text: str = ""                       # the original file text

    def backend_option(self, name: str, default: Any = None) -> Any:
        """A Backend key, matched case-insensitively as Go's encoding/json does."""
        return loads_case_insensitive(self.backend, name, default)
