"""Where webhooks may go: the host is resolved and internal addresses refused, at creation and at send time.

A webhook URL is chosen by any project, so without this check the signed POST is a request the
service makes on the attacker's behalf into its own network (SSRF). Every address the host resolves
to must be public unless the operator allows it (GRADHEALTH_WEBHOOK_ALLOW_HOSTS: host names or CIDRs),
and the POST goes to the very address that was checked, so a name cannot re-resolve in between
(DNS rebinding). Messages never name the resolved address or echo connection errors: they would
tell a caller what lives on the internal network.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = ipaddress.ip_network("64:ff9b::/96")
ALLOW_SETTING = "GRADHEALTH_WEBHOOK_ALLOW_HOSTS"
REFUSED, CONNECT_FAILED, TIMEOUT, HTTP_STATUS = "refused_address", "connect_failed", "timeout", "http_status"


class TargetError(Exception):
    """The URL cannot receive a webhook now; `category` is what a delivery row records."""

    def __init__(self, message: str, category: str = REFUSED) -> None:
        super().__init__(message)
        self.category = category


@dataclass(frozen=True)
class AllowList:
    """Operator exceptions: host names (matched exactly) and networks (matched by address)."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class Target:
    """A checked URL and the address it resolved to: the POST connects there and nowhere else."""

    url: httpx.URL
    host: str
    address: str


def parse_allow(spec: str) -> AllowList:
    """'hooks.internal, 10.1.0.0/16, 127.0.0.1' -> host names and networks (a bare address is a /32 or /128)."""
    hosts, networks = set(), []
    for raw in spec.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            hosts.add(item.rstrip("."))
    return AllowList(frozenset(hosts), tuple(networks))


def _embedded_v4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), which is where it really goes."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_internal(address: IPAddress) -> bool:
    """Loopback, private, shared, link-local (cloud metadata), multicast, unspecified, reserved or site-local."""
    embedded = _embedded_v4(address)
    if embedded is not None and is_internal(embedded):
        return True
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def _allowed(address: IPAddress, allow: AllowList) -> bool:
    candidates = [address] + [v4 for v4 in [_embedded_v4(address)] if v4 is not None]
    return any(a in network for a in candidates for network in allow.networks if a.version == network.version)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to (numeric forms such as 127.1 or 0x7f000001 included)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetError(f"the webhook host {host!r} does not resolve", CONNECT_FAILED) from exc
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise TargetError(f"the webhook host {host!r} does not resolve", CONNECT_FAILED)
    return addresses


def parse(url: str) -> httpx.URL:
    """The URL as the HTTP client will read it, refused when it is not plain http(s) without credentials."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise TargetError("webhook_url is not a valid URL") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise TargetError("webhook_url must be an http:// or https:// URL with a host")
    if parsed.userinfo or "@" in parsed.netloc.decode("ascii", "replace"):
        raise TargetError("webhook_url must not contain credentials (user:password@); receivers verify the signature")
    return parsed


def check(url: str, allow: AllowList) -> Target:
    """Resolve the URL's host and refuse it unless every address is public or allowed by the operator."""
    parsed = parse(url)
    host = parsed.host.lower().rstrip(".")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = resolve(host, port)
    if host not in allow.hosts:
        for address in addresses:
            if is_internal(address) and not _allowed(address, allow):
                raise TargetError(
                    f"webhook_url host {host!r} is or resolves to an internal address (loopback, private, "
                    f"link-local, metadata, multicast or reserved), which this server does not send to; "
                    f"an operator can allow it with {ALLOW_SETTING}"
                )
    return Target(parsed, host, str(addresses[0]))


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST to the checked address (Host and TLS name stay the URL's); no redirects, proxies or response body read."""
    pinned = target.url.copy_with(host=target.address)
    extensions = {} if target.address == target.host.strip("[]") else {"sni_hostname": target.host}
    request_headers = {**headers, "Host": target.url.netloc.decode("ascii")}
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        request = client.build_request("POST", pinned, content=body, headers=request_headers, extensions=extensions)
        response = client.send(request, stream=True)
        response.close()
        return response.status_code
