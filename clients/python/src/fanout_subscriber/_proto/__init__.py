"""Generated gRPC and protobuf modules of fanout.v1 (see generate.sh); not a public API."""
