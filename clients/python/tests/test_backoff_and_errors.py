"""Reconnect backoff with jitter, the classification of statuses, and the settings' checks."""

from __future__ import annotations

import random

import grpc
import pytest

from fanout_subscriber import IdentityRefused, Refused, RouteNotFound, Settings, SettingsError, Tls
from fanout_subscriber._backoff import Backoff
from fanout_subscriber._classify import Verdict, verdict
from fanout_subscriber._replicas import authority, changes, static
from fanout_subscriber.errors import refusal
from fanout_subscriber.settings import as_pod_name, downward_api_labels, resolve


def test_backoff_doubles_within_its_jitter_bounds_up_to_the_maximum_and_resets() -> None:
    for seed in range(50):
        backoff = Backoff(0.1, 10.0, rng=random.Random(seed))
        for n in range(12):
            base = min(0.1 * 2**n, 10.0)
            delay = backoff.next()
            assert base <= delay <= base * 1.5, (seed, n, delay)
        backoff.reset()
        assert 0.1 <= backoff.next() <= 0.15


def test_backoff_jitter_spreads_the_delays() -> None:
    delays = {round(Backoff(1.0, 1.0, rng=random.Random(seed)).next(), 6) for seed in range(20)}
    assert len(delays) > 10, "replicas and pods do not retry in step"


def test_configuration_errors_are_fatal_identity_is_retried_a_while_and_the_rest_always() -> None:
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED):
        assert verdict(code) is Verdict.FATAL, code
    for code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        assert verdict(code) is Verdict.IDENTITY, code
    for code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        assert verdict(code) is Verdict.RETRY, code


def test_refusals_are_typed_and_carry_the_code_and_the_gateways_message() -> None:
    error = refusal("gw:1", "orders", grpc.StatusCode.NOT_FOUND, "route `orders` is not configured")
    assert isinstance(error, RouteNotFound) and isinstance(error, Refused)
    assert (error.code, error.replica, error.route) == (grpc.StatusCode.NOT_FOUND, "gw:1", "orders")
    assert "NOT_FOUND" in str(error) and "route `orders` is not configured" in str(error)
    assert isinstance(refusal("gw:1", "r", grpc.StatusCode.PERMISSION_DENIED, "no"), IdentityRefused)
    other = refusal("gw:1", "r", grpc.StatusCode.INVALID_ARGUMENT, "bad hello")
    assert type(other) is Refused and other.message == "bad hello"


def test_settings_are_checked_and_give_the_hello() -> None:
    resolved = resolve(Settings(route="orders", gateways=["http://a:1", "a:1", "b:1"], concurrency=8, name="pod-1"))
    assert resolved.replicas == ("a:1", "b:1")
    assert (resolved.hello.max_in_flight, resolved.ack_batch) == (16, 8), "window twice the concurrency"
    assert resolved.hello.pod_name == "pod-1"
    assert not resolved.hello.HasField("rate_limit")
    small = resolve(Settings(route="r", gateways=["a:1"], max_in_flight=10))
    assert (small.hello.max_in_flight, small.ack_batch) == (10, 5)
    routes = resolve(Settings(route="r", gateways=["a:1"], max_in_flight=0))
    assert (routes.hello.max_in_flight, routes.ack_batch) == (0, 64)
    limited = resolve(Settings(route="r", gateways=["a:1"], max_messages_per_second=50, rate_burst=5))
    assert (limited.hello.rate_limit.messages_per_s, limited.hello.rate_limit.burst) == (50, 5)
    for bad, field in [
        (Settings(route=" ", gateways=["a:1"]), "route"),
        (Settings(route="r"), "gateways"),
        (Settings(route="r", gateways=["a:1"], gateway_dns="gw:1"), "gateways"),
        (Settings(route="r", gateway_dns="no-port"), "gateway_dns"),
        (Settings(route="r", gateways=["a:1"], concurrency=0), "concurrency"),
        (Settings(route="r", gateways=["a:1"], backoff_min=0), "backoff_min"),
        (Settings(route="r", gateways=["https://a:1"]), "tls"),
        (Settings(route="r", gateways=["a:1"], tls=Tls(cert_file="c.pem")), "tls"),
        (Settings(route="r", gateways=["a:1"], rate_burst=3), "rate_burst"),
        (Settings(route="r", gateways=["a:1"], labels_file="/nonexistent/labels"), "labels_file"),
    ]:
        with pytest.raises(SettingsError) as raised:
            resolve(bad)
        assert raised.value.field == field, bad


def test_labels_come_from_the_downward_api_file_and_code_wins(tmp_path: pytest.TempPathFactory) -> None:
    text = 'app="orders"\ntrack="canary"\nnote="a \\"quoted\\" word"\nbroken\n'
    assert downward_api_labels(text) == {"app": "orders", "track": "canary", "note": 'a "quoted" word'}
    path = tmp_path / "labels"  # type: ignore[operator]
    path.write_text('track="blue"\napp="orders"\n')
    hello = resolve(Settings(route="r", gateways=["a:1"], labels={"track": "green"}, labels_file=str(path))).hello
    assert dict(hello.labels) == {"track": "green", "app": "orders"}


def test_a_host_name_becomes_a_pod_name_the_gateway_accepts() -> None:
    assert as_pod_name("orders-7d9f4-x2x8q") == "orders-7d9f4-x2x8q"
    assert as_pod_name("Dev-Box_1.local") == "dev-box-1.local"
    assert as_pod_name("-x-.-.y") == "x.y"
    assert as_pod_name("___") == "subscriber"
    assert len(as_pod_name("a" * 300)) == 253


def test_replicas_are_keyed_by_authority_and_dns_answers_become_changes() -> None:
    assert authority("http://gw-0:50051") == "gw-0:50051"
    assert authority("https://gw-0:50051/") == "gw-0:50051"
    assert static(["http://a:1", "a:1", "b:1"]) == ["a:1", "b:1"]
    assert changes({"10.0.0.1:1", "10.0.0.2:1"}, {"10.0.0.2:1", "10.0.0.3:1"}) == (["10.0.0.1:1"], ["10.0.0.3:1"])
    assert changes({"10.0.0.1:1"}, {"10.0.0.1:1"}) == ([], [])
