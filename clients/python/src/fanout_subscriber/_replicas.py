"""Which gateway replicas to open streams to: a fixed list, or a DNS name (the gateway's
headless Service) resolved again and again so replicas that come and go are followed (as
fanout-client's ``replicas``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

#: Turns ``host:port`` into the ``address:port`` of every replica it stands for now.
Resolver = Callable[[str], Awaitable[Sequence[str]]]


def authority(endpoint: str) -> str:
    """The endpoint's ``host:port``, whatever scheme it was written with."""
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
            break
    return endpoint.rstrip("/")


def split_host_port(name: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as its host and port; ``ValueError`` when it has no
    numeric port."""
    host, sep, port = name.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{name!r} is not host:port")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def static(endpoints: Iterable[str]) -> list[str]:
    """The replicas of a fixed list: each endpoint's authority, once, in the order given."""
    seen: list[str] = []
    for endpoint in endpoints:
        key = authority(endpoint)
        if key not in seen:
            seen.append(key)
    return seen


def changes(current: set[str], resolved: set[str]) -> tuple[list[str], list[str]]:
    """What takes the replica set from ``current`` to ``resolved``: (removed, added), sorted."""
    return sorted(current - resolved), sorted(resolved - current)


async def system_resolver(name: str) -> list[str]:
    """The system's resolver (getaddrinfo): every address ``host:port`` stands for."""
    host, port = split_host_port(name)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({join_host_port(str(info[4][0]), port) for info in infos})
