"""The settings of a subscriber: one dataclass, every field but the route and the replicas
with a documented default (the defaults of fanout-client, the Rust library)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ._proto import fanout_pb2 as pb
from .errors import SettingsError

__all__ = ["Settings", "Tls"]

_DAY = 24 * 3600.0


@dataclass(frozen=True)
class Tls:
    """TLS toward the gateway: the CA that signed its certificate, and for mTLS the client's
    own certificate and key (PEM files, read when the subscriber starts)."""

    #: The CA that signed the gateway's certificate (PEM); ``None``: the system's roots.
    ca_file: str | None = None
    #: mTLS: this subscriber's certificate chain (PEM), with ``key_file``.
    cert_file: str | None = None
    #: mTLS: this subscriber's private key (PEM), with ``cert_file``.
    key_file: str | None = None
    #: The name the gateway's certificate must carry when it is not the host dialled. With
    #: ``gateway_dns`` the replicas are dialled by address, so it defaults to the DNS name's
    #: host (the Service's name, which the certificate names).
    server_name: str | None = None


@dataclass(frozen=True)
class Settings:
    """How a subscriber subscribes. ``route`` and one of ``gateways`` / ``gateway_dns`` are
    required; everything else has a default."""

    #: The route to subscribe to (a ``[[routes]]`` name of the gateway's config).
    route: str
    #: Every gateway replica's Subscribe address, ``host:port`` (``http://`` or ``https://``
    #: prefixes are accepted): one stream per replica.
    gateways: Sequence[str] = ()
    #: Or a DNS name, ``host:port``, every address of which is a replica: in Kubernetes the
    #: gateway's headless Service, e.g.
    #: ``fanout-gateway-headless.fanout.svc.cluster.local:50051``. Resolved every
    #: ``dns_refresh`` seconds; streams are added and removed as addresses come and go.
    gateway_dns: str | None = None
    #: Seconds between resolutions of ``gateway_dns`` (default 10).
    dns_refresh: float = 10.0
    #: The name sent in the Hello (the pod name in Kubernetes mode). Default: ``$POD_NAME``,
    #: then ``$HOSTNAME`` made a valid pod name, then ``"subscriber"``.
    name: str | None = None
    #: The namespace sent in the Hello. Default: ``$POD_NAMESPACE``, else empty.
    namespace: str | None = None
    #: Labels of this subscriber, which a gateway with static discovery routes by (the
    #: route's ``split_label``, e.g. ``{"track": "canary"}``).
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The pod's labels from a downward-API volume file (``metadata.labels``: lines of
    #: ``key="value"``); ``labels`` win over the file's.
    labels_file: str | None = None
    #: Handlers running at once over all streams (default 16); a key's deliveries run one at a
    #: time whatever this is.
    concurrency: int = 16
    #: Deliveries each stream may hold un-acked (``Hello.max_in_flight``). Default ``None``:
    #: twice ``concurrency``; 0: the route's default window. Capped by the route's
    #: ``max_in_flight``.
    max_in_flight: int | None = None
    #: Deliveries per second each stream takes at most (``Hello.rate_limit``, capped by the
    #: route's limit; 0, the default: the route's limit alone).
    max_messages_per_second: int = 0
    #: Bytes (key, value and headers) per second each stream takes at most (0: unlimited).
    max_bytes_per_second: int = 0
    #: Deliveries that may go at once after a quiet spell (needs
    #: ``max_messages_per_second``; 0: a tenth of a second's worth).
    rate_burst: int = 0
    #: Ack ids per ``Ack`` frame at most (default 64; never more than half the window, so a
    #: small window is not left waiting for the interval).
    ack_batch: int = 64
    #: Seconds pending acks wait at most before they go up (default 0.01).
    ack_interval: float = 0.01
    #: Seconds a drain waits for in-flight handlers (default 20; keep it under the pod's
    #: ``terminationGracePeriodSeconds``). What has not finished then is redelivered.
    drain_timeout: float = 20.0
    #: Reconnect backoff: the first delay in seconds (default 0.1), doubling with jitter ...
    backoff_min: float = 0.1
    #: ... up to this (default 10).
    backoff_max: float = 10.0
    #: A stream up this many seconds resets the backoff (default 10).
    healthy_after: float = 10.0
    #: Seconds a replica may refuse this subscriber's identity (PERMISSION_DENIED,
    #: UNAUTHENTICATED) before the refusal is final (default 30): in Kubernetes a pod that just
    #: started is refused until the gateway's watch has seen it running.
    identity_grace: float = 30.0
    #: Seconds a held delivery (its handler running or waiting for one) is kept by extending
    #: its ack deadline (default 3600, as Pub/Sub's maximum extension; 0: never extended;
    #: ``math.inf``: no maximum). The route's ``max_lease_ms`` bounds it too.
    max_lease_extension: float = 3600.0
    #: The largest response a stream accepts (default 64 MiB): a delivery carries a whole
    #: Kafka record.
    max_message_bytes: int = 64 << 20
    #: TLS or mTLS toward the gateway; ``None``: plaintext.
    tls: Tls | None = None
    #: A file holding a token (the pod's projected ServiceAccount token, for routes with
    #: ``identity = "token"``), read at every connection (the kubelet rotates it) and sent as
    #: ``authorization: Bearer <token>``.
    token_file: str | None = None


def as_pod_name(host: str) -> str:
    """A host name as a pod name the gateway accepts (a lowercase DNS subdomain of at most 253
    characters): ``Dev-Box_1.local`` becomes ``dev-box-1.local``."""
    mapped = "".join(c if (c.isascii() and (c.isalnum() or c == ".")) else "-" for c in host[:253].lower())
    parts = [p.strip("-") for p in mapped.split(".")]
    return ".".join(p for p in parts if p) or "subscriber"


def downward_api_labels(text: str) -> dict[str, str]:
    """The labels of a downward-API ``metadata.labels`` file: one ``key="value"`` per line,
    quoted and escaped as Go's ``%q``. Lines not of that form are skipped."""
    labels: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        key = key.strip()
        if not sep or not key or len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
            continue
        inner, value, i = quoted[1:-1], [], 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner):
                i += 1
            value.append(inner[i])
            i += 1
        labels[key] = "".join(value)
    return labels


@dataclass(frozen=True)
class Resolved:
    """Settings checked and turned into what the streams use."""

    settings: Settings
    hello: pb.Hello
    ack_batch: int
    replicas: tuple[str, ...]


def resolve(settings: Settings) -> Resolved:
    """Checks ``settings``; raises :class:`SettingsError` naming the field at fault."""
    from . import _replicas

    s = settings
    if not s.route.strip():
        raise SettingsError("route", "must name a route of the gateway's config")
    if bool(s.gateways) == bool(s.gateway_dns):
        raise SettingsError("gateways", "give the replicas as gateways=[host:port, ...] or gateway_dns=host:port")
    if isinstance(s.gateways, str):
        raise SettingsError("gateways", "a list of host:port, not one string")
    replicas: tuple[str, ...] = ()
    if s.gateways:
        replicas = tuple(_replicas.static(s.gateways))
        for endpoint in s.gateways:
            if endpoint.startswith("https://") and s.tls is None:
                raise SettingsError("tls", f"{endpoint} is https: give tls=Tls(ca_file=...) for the gateway's CA")
    else:
        assert s.gateway_dns is not None
        try:
            _replicas.split_host_port(_replicas.authority(s.gateway_dns))
        except ValueError as error:
            raise SettingsError("gateway_dns", str(error)) from None
        if not s.dns_refresh > 0:
            raise SettingsError("dns_refresh", "must be positive")
    if s.concurrency < 1:
        raise SettingsError("concurrency", "must be at least 1")
    if s.ack_batch < 1:
        raise SettingsError("ack_batch", "must be at least 1")
    for name in ("ack_interval", "drain_timeout", "healthy_after", "identity_grace", "backoff_max"):
        value = getattr(s, name)
        if not 0 <= value <= _DAY:
            raise SettingsError(name, "must be between 0 and a day (seconds)")
    if not 0 < s.backoff_min <= s.backoff_max:
        raise SettingsError("backoff_min", "must be positive and at most backoff_max")
    if not (s.max_lease_extension >= 0 or math.isinf(s.max_lease_extension)):
        raise SettingsError("max_lease_extension", "must be at least 0")
    for name in ("max_messages_per_second", "max_bytes_per_second", "rate_burst"):
        if getattr(s, name) < 0:
            raise SettingsError(name, "must be at least 0")
    if s.rate_burst and not s.max_messages_per_second:
        raise SettingsError("rate_burst", "needs max_messages_per_second")
    if s.max_message_bytes < 1:
        raise SettingsError("max_message_bytes", "must be positive")
    if s.tls is not None and (s.tls.cert_file is None) != (s.tls.key_file is None):
        raise SettingsError("tls", "cert_file and key_file go together (mTLS needs both)")
    window = 2 * s.concurrency if s.max_in_flight is None else s.max_in_flight
    if not 0 <= window < 2**32:
        raise SettingsError("max_in_flight", "must be between 0 and 2^32 - 1")

    name = s.name or os.environ.get("POD_NAME") or ""
    if not name:
        host = os.environ.get("HOSTNAME", "")
        name = as_pod_name(host) if host else "subscriber"
    hello = pb.Hello(
        route=s.route,
        pod_name=name,
        namespace=s.namespace if s.namespace is not None else os.environ.get("POD_NAMESPACE", ""),
        max_in_flight=window,
    )
    if s.labels_file is not None:
        try:
            with open(s.labels_file, encoding="utf-8") as f:
                hello.labels.update(downward_api_labels(f.read()))
        except OSError as error:
            raise SettingsError("labels_file", f"cannot read {s.labels_file}: {error}") from None
    hello.labels.update(dict(s.labels))
    if s.max_messages_per_second or s.max_bytes_per_second:
        hello.rate_limit.messages_per_s = s.max_messages_per_second
        hello.rate_limit.bytes_per_s = s.max_bytes_per_second
        hello.rate_limit.burst = s.rate_burst
    ack_batch = s.ack_batch if window == 0 else min(s.ack_batch, max(window // 2, 1))
    return Resolved(settings=s, hello=hello, ack_batch=ack_batch, replicas=replicas)
