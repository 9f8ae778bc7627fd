#!/usr/bin/env python3
"""A fanout-gateway subscriber service on the fanout_subscriber library: copy it as the
skeleton of a service. Put your logic in handle(); the library does the rest of the contract
(a stream to every gateway replica, reconnects with backoff, per-key order, batched acks,
lease extension, drain on SIGTERM).

Install the library first: pip install ../../clients/python (see README.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import signal
import socket
import sys
import threading

try:
    from fanout_subscriber import DeadLetter, Message, Refused, Settings, SubscriberError, Subscriber, Tls
except ImportError as error:
    sys.exit(f"python-subscriber: no fanout_subscriber library ({error}); pip install ../../clients/python")

log = logging.getLogger("python-subscriber")


def handle(message: Message) -> None:
    """Your business logic. Return to ack; raise to nack (the gateway delivers it again later);
    raise DeadLetter("why") for a message that can never succeed, Overloaded() for
    back-pressure (it comes again without using up an attempt).

    Delivery is at-least-once: a message can come twice. Recognise it by (topic, partition,
    offset), or by message.idempotency_key on effectively-once routes."""
    if message.value is None:
        return  # a tombstone
    if not message.value:
        raise DeadLetter("an empty value")  # e.g. json.loads(message.value) would never work
    _payload = message.value  # e.g. json.loads(message.value)


def label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--gateway", action="append", metavar="HOST:PORT",
                       help="a gateway replica's Subscribe address (repeat: one stream per replica)")
    where.add_argument("--gateways-dns", metavar="HOST:PORT",
                       help="a DNS name every address of which is a replica (the gateway's headless Service)")
    p.add_argument("--route", required=True)
    p.add_argument("--name", default=os.environ.get("POD_NAME") or f"python-{socket.gethostname()}",
                   help="pod name sent in Hello (default: $POD_NAME)")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""))
    p.add_argument("--label", type=label, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--concurrency", type=int, default=16, help="handlers at once (one at a time per key)")
    p.add_argument("--max-in-flight", type=int, default=None, help="window per stream (0: the route's default)")
    p.add_argument("--max-per-second", type=int, default=0,
                   help="deliveries per second this subscriber takes from each replica (0: the route's limit alone)")
    p.add_argument("--ack-batch", type=int, default=64, help="ack ids per Ack message at most")
    p.add_argument("--count", type=int, default=0, help="drain and exit after handling N (0: run forever)")
    p.add_argument("--tls-ca", help="CA (PEM) of the gateway's certificate: TLS")
    p.add_argument("--tls-cert", help="client certificate (PEM), with --tls-key: mTLS")
    p.add_argument("--tls-key", help="client key (PEM)")
    p.add_argument("--token-file", default=os.environ.get("FANOUT_TOKEN_FILE"),
                   help="token sent as `authorization: Bearer` (routes with identity = \"token\")")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="python-subscriber: %(message)s")
    tls = Tls(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key) if args.tls_ca else None
    settings = Settings(
        route=args.route,
        gateways=args.gateway or (),
        gateway_dns=args.gateways_dns,
        name=args.name,
        namespace=args.namespace,
        labels=dict(args.label),
        concurrency=args.concurrency,
        max_in_flight=args.max_in_flight,
        max_messages_per_second=args.max_per_second,
        ack_batch=args.ack_batch,
        drain_timeout=10.0,  # keep it under the pod's terminationGracePeriodSeconds
        backoff_max=5.0,
        tls=tls,
        token_file=args.token_file,
    )
    try:
        subscriber = Subscriber(settings)
    except SubscriberError as error:
        log.error("%s", error)
        return 2

    handled = 0
    lock = threading.Lock()
    stop = threading.Event()  # set by --count or a signal: drain

    def callback(message: Message) -> None:
        nonlocal handled
        handle(message)
        with lock:
            handled += 1
            if args.count and handled == args.count:
                log.info("handled %d: draining", args.count)
                stop.set()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    future = subscriber.subscribe(callback)
    while not future.done():  # the main thread stays free to take signals
        if stop.is_set() and not future.cancelled():
            future.cancel()  # a drain: what is in flight is handled and acked, then result() returns
        concurrent.futures.wait([future], timeout=0.1)
    try:
        future.result()
    except Refused as error:
        log.error("%s (fatal, not retried)", error)
        return 2
    stats = future.stats()
    replicas = len(args.gateway or ()) or "dns"
    print(f"python-subscriber: acked={stats.acked} replicas={replicas} reconnects={stats.reconnects}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
