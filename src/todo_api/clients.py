"""Who is calling: the client address, believing X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import ipaddress

from starlette.requests import Request

from todo_api.config import IPNetwork


def _trusted(address: str, proxies: list[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(request: Request, trusted_proxies: list[IPNetwork]) -> str:
    peer = request.client.host if request.client else "unknown"
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for hop in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if hop.strip()]
    # Read from the right: the nearest hops are our own proxies; the first one that is not is the client.
    for hop in reversed(hops):
        if not _trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer
