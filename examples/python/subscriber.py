#!/usr/bin/env python3
"""A fanout-gateway subscriber with Python's grpcio: copy it as the skeleton of a service.

- One Subscribe stream per gateway replica (--gateway, repeatable), each in its own thread.
- Every stream sends Hello first, then acks (batched) for the deliveries it handled.
- A failed stream is reopened with exponential backoff and jitter. Statuses a retry cannot
  fix (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED) exit with code 2.
- SIGTERM/SIGINT (or --count reached) drains: Drain on every stream, keep acking until the
  gateway closes the streams (it does once nothing is in flight) or 10 s pass; exit 0.
- A stream the gateway ends with OK unasked was drained by an operator (`fanoutctl drain`):
  the subscriber drains its other streams too and reconnects to none.
- Every delivery held past half the route's ack deadline (each response says it,
  ack_timeout_ms), being handled or waiting behind the handler, is extended (Extend) every
  half deadline until it is settled, up to MAX_LEASE: a slow handler's deliveries are not
  redelivered while it works.

Run ./generate.sh first: it writes the stubs into gen/ from the repository's proto/.
"""

import argparse
import os
import queue
import random
import signal
import socket
import sys
import threading
import time

import grpc
from google.protobuf import duration_pb2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
try:
    from fanout.v1 import fanout_pb2 as pb
    from fanout.v1 import fanout_pb2_grpc as rpc
except ImportError as error:
    sys.exit(f"python-subscriber: no stubs ({error}); run ./generate.sh first")

# Statuses that mean "fix the config or the credentials", not "try again later".
FATAL = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
BACKOFF_START, BACKOFF_CAP = 0.1, 5.0  # seconds
STABLE_AFTER = 10.0  # a stream up this long resets the backoff
ACK_INTERVAL = 0.1  # pending acks go out at least this often
DRAIN_DEADLINE = 10.0
MAX_LEASE = 3600.0  # seconds a running handler's delivery is kept by extending it
CLOSE = object()  # tells a stream's request generator to stop


def log(message):
    print(f"python-subscriber: {message}", file=sys.stderr, flush=True)


class Overloaded(Exception):
    """Raise from handle() when the service cannot take more now (a saturated database): the
    message comes again after the route's backoff without using up an attempt, and on a route
    with window = "adaptive" the gateway sends fewer at once."""


def handle(delivery):
    """Your business logic. Return to ack; raise to nack (the gateway delivers it again later;
    raise Overloaded for back-pressure).

    Delivery is at-least-once: a message can come twice. Recognise it by (topic, partition,
    offset), or by delivery.idempotency_key on effectively-once routes."""
    if delivery.HasField("value"):
        _payload = delivery.value  # e.g. json.loads(delivery.value)


class Lease:
    """Extends the deliveries a stream holds (the one its handler works on and those of the same
    response waiting for it), from a thread of its own: each, every half deadline from when it
    arrived, by one deadline, until MAX_LEASE has passed. An Extend that crosses the Ack of the
    same delivery is counted and ignored by the gateway."""

    def __init__(self, outgoing):
        self.outgoing = outgoing
        self.lock = threading.Lock()
        self.held = {}  # ack_id -> (arrived, deadline_ms, last extended)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def arrived(self, ack_ids, ack_timeout_ms):
        if not ack_timeout_ms:
            return  # the route has no deadline
        now = time.monotonic()
        with self.lock:
            for ack_id in ack_ids:
                self.held[ack_id] = (now, ack_timeout_ms, now)

    def settled(self, ack_id):
        with self.lock:
            self.held.pop(ack_id, None)

    def run(self):
        while not self.done.wait(0.05):
            now, due = time.monotonic(), []
            with self.lock:
                for ack_id, (arrived, timeout_ms, last) in list(self.held.items()):
                    if now - arrived > MAX_LEASE:
                        del self.held[ack_id]  # let it go back
                    elif now - last >= timeout_ms / 2000.0:
                        self.held[ack_id] = (arrived, timeout_ms, now)
                        due.append((ack_id, timeout_ms))
            for ack_id, timeout_ms in due:
                extension = duration_pb2.Duration()
                extension.FromMilliseconds(timeout_ms)
                self.outgoing.put(pb.SubscribeRequest(extend=pb.Extend(ack_ids=[ack_id], extension=extension)))

    def close(self):
        self.done.set()
        self.thread.join()


class Subscriber:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.acked = 0
        self.reconnects = 0
        self.draining = threading.Event()
        self.fatal = False
        self.open = {}  # gateway -> (outgoing queue, call) of its current stream

    def request_drain(self):
        """Asks every open stream to drain; streams opened from now on drain at once."""
        with self.lock:
            if self.draining.is_set():
                return
            self.draining.set()
            for outgoing, _ in self.open.values():
                outgoing.put(pb.SubscribeRequest(drain=pb.Drain()))

    def count_acked(self, n):
        with self.lock:
            self.acked += n
            reached = self.args.count and self.acked >= self.args.count
        if reached:
            self.request_drain()

    def replica(self, gateway):
        """One gateway replica: keeps a stream open until drained or a fatal status."""
        backoff = BACKOFF_START
        while not self.draining.is_set():
            opened = time.monotonic()
            try:
                self.stream(gateway)
                if not self.draining.is_set():
                    log(f"{gateway}: the gateway drained this subscriber (fanoutctl drain); not reconnecting")
                    self.request_drain()
                return  # OK: drained, by us or by an operator
            except grpc.RpcError as error:
                if error.code() in FATAL:
                    log(f"{gateway}: {error.code().name}: {error.details()} (fatal, not retried)")
                    self.fatal = True
                    return
                reason = f"{error.code().name}: {error.details()}"
            if self.draining.is_set():
                return  # drained (or the gateway went away while draining): done
            if time.monotonic() - opened >= STABLE_AFTER:
                backoff = BACKOFF_START
            delay = random.uniform(backoff / 2, backoff)  # jitter: replicas don't retry in step
            backoff = min(backoff * 2, BACKOFF_CAP)
            with self.lock:
                self.reconnects += 1
                attempt = self.reconnects
            log(f"{gateway}: {reason}; reconnect attempt {attempt} in {delay * 1000:.0f} ms")
            self.draining.wait(delay)

    def stream(self, gateway):
        """One Subscribe stream: returns when the gateway ends it OK, raises RpcError otherwise."""
        hello = pb.Hello(
            route=self.args.route,
            pod_name=self.args.name,
            namespace=self.args.namespace,
            max_in_flight=self.args.max_in_flight,
            labels=dict(self.args.label),
        )
        if self.args.max_per_second:
            # Capped by the route's rate_limit: a subscriber may go slower, never faster.
            hello.rate_limit.messages_per_s = self.args.max_per_second
        outgoing = queue.Queue()  # ack ids (int) and whole requests (nack, drain), in order
        # A fresh channel per attempt: our backoff decides when to retry, not the channel's.
        with grpc.insecure_channel(gateway) as channel:
            call = rpc.FanoutStub(channel).Subscribe(self.requests(hello, outgoing))
            with self.lock:
                self.open[gateway] = (outgoing, call)
                if self.draining.is_set():
                    outgoing.put(pb.SubscribeRequest(drain=pb.Drain()))
            lease = Lease(outgoing)
            try:
                for response in call:
                    lease.arrived([d.ack_id for d in response.deliveries], response.ack_timeout_ms)
                    for delivery in response.deliveries:
                        try:
                            handle(delivery)
                            outgoing.put(delivery.ack_id)
                        except Exception as error:  # any failure of the handler: nack
                            disposition = (pb.DISPOSITION_OVERLOADED if isinstance(error, Overloaded)
                                           else pb.DISPOSITION_RETRY)
                            nack = pb.Nack(ack_id=delivery.ack_id, reason=str(error)[:200],
                                           disposition=disposition)
                            outgoing.put(pb.SubscribeRequest(nack=nack))
                        finally:
                            lease.settled(delivery.ack_id)
            finally:
                lease.close()
                with self.lock:
                    self.open.pop(gateway, None)
                outgoing.put(CLOSE)

    def requests(self, hello, outgoing):
        """The client side of one stream (grpcio reads it from its own thread): Hello, then
        acks in batches of up to --ack-batch ids, flushed at least every ACK_INTERVAL."""
        yield pb.SubscribeRequest(hello=hello)
        batch, flush_at = [], None
        while True:
            timeout = None if flush_at is None else max(0.0, flush_at - time.monotonic())
            try:
                item = outgoing.get(timeout=timeout)
            except queue.Empty:
                item = None  # ACK_INTERVAL is up
            if item is CLOSE:
                return  # the stream is over; its ack ids mean nothing on another stream
            if isinstance(item, int):
                batch.append(item)
                flush_at = flush_at or time.monotonic() + ACK_INTERVAL
                if len(batch) < self.args.ack_batch:
                    continue
            if batch:  # full, timed out, or a nack/drain follows (keep the order)
                yield pb.SubscribeRequest(ack=pb.Ack(ack_ids=batch))
                self.count_acked(len(batch))
                batch, flush_at = [], None
            if item is not None and not isinstance(item, int):
                yield item

    def cancel_all(self):
        with self.lock:
            for _, call in self.open.values():
                call.cancel()


def pod_name(host):
    """A host name as a pod name the gateway accepts (a lowercase DNS subdomain, at most 253
    characters): a laptop's `Dev-Box_1.local` becomes `dev-box-1.local`."""
    mapped = "".join(c if c.isascii() and (c.isalnum() or c == ".") else "-" for c in host.lower()[:253])
    return ".".join(p.strip("-") for p in mapped.split(".") if p.strip("-")) or "subscriber"


def label(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gateway", action="append", required=True, metavar="HOST:PORT",
                   help="a gateway replica's Subscribe address (repeat: one stream per replica)")
    p.add_argument("--route", required=True)
    p.add_argument("--name", default=os.environ.get("POD_NAME") or pod_name(f"python-{socket.gethostname()}"),
                   help="pod name sent in Hello (default: $POD_NAME)")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""))
    p.add_argument("--max-in-flight", type=int, default=0, help="0: the route's default")
    p.add_argument("--label", type=label, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-per-second", type=int, default=0,
                   help="deliveries per second this subscriber takes from each replica (Hello.rate_limit; "
                        "0: the route's limit alone)")
    p.add_argument("--count", type=int, default=0, help="drain and exit after acking N (0: run forever)")
    p.add_argument("--ack-batch", type=int, default=50, help="ack ids per Ack message at most")
    args = p.parse_args()
    args.ack_batch = max(1, args.ack_batch)
    return args


def main():
    args = parse_args()
    sub = Subscriber(args)

    def on_signal(signum, _frame):
        log(f"{signal.Signals(signum).name}: draining")
        sub.request_drain()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=sub.replica, args=(g,), name=g, daemon=True) for g in args.gateway]
    for t in threads:
        t.start()
    deadline = None
    while any(t.is_alive() for t in threads) and not sub.fatal:
        time.sleep(0.05)  # the main thread stays free to take signals
        if sub.draining.is_set():
            deadline = deadline or time.monotonic() + DRAIN_DEADLINE
            if time.monotonic() > deadline:
                log("drain deadline passed; closing the streams (the gateway redelivers what is unacked)")
                sub.cancel_all()
                break
    if sub.fatal:
        return 2
    print(f"python-subscriber: acked={sub.acked} replicas={len(threads)} reconnects={sub.reconnects}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
