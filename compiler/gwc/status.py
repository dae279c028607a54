"""Stage 3, the status listener (x-gateway.status): a server of its own for the
gateway's operational data (/usage now; /metrics and /status later).

It is kept off the public listeners by port, and off the network by default:
a loopback address, and `allow` (then `deny all`) for every client address.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from .diagnostics import Diagnostic
from .load import SourceFile
from .schema_defaults import with_defaults

if TYPE_CHECKING:  # model imports this module
    from .model import Listen


@dataclass(frozen=True)
class StatusListener:
    listen: "Listen"
    allow: Tuple[str, ...]  # normalised CIDR blocks, then `deny all`


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; "" (every address) and other names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(conf: Optional[dict], src: SourceFile, diags: List[Diagnostic], public: Sequence["Listen"],
          parse_listen: Callable, cidrs: Callable) -> Optional[StatusListener]:
    """The status listener, or None when x-gateway.status is absent or wrong (then with diagnostics).

    public: every public listener (plain and TLS); parse_listen: model.parse_listen;
    cidrs: SecurityBuilder.cidrs, which reports bad blocks as GW047."""
    if conf is None:
        return None
    ptr = "/x-gateway/status"
    explicit_allow = "allow" in conf
    conf = with_defaults(conf, {"$ref": "status.json"})

    def error(message: str, where: str) -> None:
        line, col = src.position(where)
        diags.append(Diagnostic("GW094", message, src.display, line, col, where))

    listen = parse_listen(conf["listen"])
    if isinstance(listen, str):
        error(f"invalid status listen address {conf['listen']!r}: {listen}", ptr + "/listen" if "listen" in conf else ptr)
        return None
    taken = sorted({p.port for p in public})
    if listen.port in taken:
        error(f"the status listener's port {listen.port} is also a public listener's: "
              "status data must never be served on the public listeners", ptr + "/listen" if "listen" in conf else ptr)
        return None
    if not explicit_allow and not is_loopback(listen.host):
        error(f"the status listener on {listen.address} is reachable beyond this host: "
              "name the clients that may read it in x-gateway.status.allow", ptr + "/listen")
        return None
    allow = cidrs(conf["allow"], src, ptr + "/allow")
    if allow is None:
        return None
    return StatusListener(listen, allow)
