"""Who is calling: the client address, believing X-Forwarded-For only from trusted proxies, as rate limits count it.

An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack listener reports for an IPv4 peer) is that
IPv4 address, for TRUSTED_PROXIES too; any other IPv6 client is counted by its /64, which is what one home line or
one server gets (a fresh address per request within it would otherwise be a fresh budget)."""

from __future__ import annotations

import ipaddress

from starlette.requests import Request

from todo_api.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(address: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(address.strip().removeprefix("[").split("]")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip: IPAddress | None, proxies: list[IPNetwork]) -> bool:
    return ip is not None and any(ip in network for network in proxies)


def client_key(ip: IPAddress | None, raw: str) -> str:
    """What a rate limit counts: an IPv4 address, an IPv6 /64, or the raw text of something that is neither."""
    if ip is None:
        return raw
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_address(request: Request, trusted_proxies: list[IPNetwork]) -> str:
    peer = request.client.host if request.client else "unknown"
    peer_ip = _parse(peer)
    if not trusted_proxies or not _trusted(peer_ip, trusted_proxies):
        return client_key(peer_ip, peer)
    hops = [hop.strip() for hop in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if hop.strip()]
    # Read from the right: the nearest hops are our own proxies; the first one that is not is the client.
    for hop in reversed(hops):
        hop_ip = _parse(hop)
        if not _trusted(hop_ip, trusted_proxies):
            return client_key(hop_ip, hop)
    if hops:
        return client_key(_parse(hops[0]), hops[0])
    return client_key(peer_ip, peer)
