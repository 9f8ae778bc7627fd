"""A subscriber written with Python's grpcio, over TLS: generates its stubs from proto/,
subscribes to a route, acks every delivery, and prints one line, `received=N`, once it has
acked `--expect` deliveries. Run by tests/grpc_tls.rs; proves the contract and the gateway's
TLS from another gRPC stack."""

import argparse
import importlib.resources
import queue
import sys
import tempfile

import grpc
from grpc_tools import protoc


def load_stubs(proto_dir, out_dir):
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "fanout/v1/fanout.proto",
    ])
    if status != 0:
        sys.exit(f"protoc failed on {proto_dir}/fanout/v1/fanout.proto")
    sys.path.insert(0, out_dir)
    from fanout.v1 import fanout_pb2, fanout_pb2_grpc
    return fanout_pb2, fanout_pb2_grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="host:port of the Subscribe port")
    parser.add_argument("--ca", required=True, help="CA (PEM) that signed the gateway's certificate")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--proto", required=True, help="the repository's proto/ directory")
    parser.add_argument("--route", required=True)
    parser.add_argument("--expect", type=int, required=True)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        pb, rpc = load_stubs(args.proto, out)
        with open(args.ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", args.server_name)]
        with grpc.secure_channel(args.target, credentials, options=options) as channel:
            requests = queue.Queue()
            requests.put(pb.SubscribeRequest(hello=pb.Hello(route=args.route, pod_name="python-tls", max_in_flight=100)))

            def outgoing():
                while True:
                    item = requests.get()
                    if item is None:
                        return
                    yield item

            received = 0
            responses = rpc.FanoutStub(channel).Subscribe(outgoing(), timeout=60)
            for response in responses:
                ids = [d.ack_id for d in response.deliveries]
                received += len(ids)
                requests.put(pb.SubscribeRequest(ack=pb.Ack(ack_ids=ids)))
                if received >= args.expect:
                    break
            # The acks queued last go out before the stream is closed.
            requests.put(pb.SubscribeRequest(drain=pb.Drain()))
            for _ in responses:
                pass
            requests.put(None)
    print(f"received={received}", flush=True)


if __name__ == "__main__":
    main()
