#!/usr/bin/env bash
# Regenerates the Go stubs of the gateway's protos (../proto) under internal/gen/. The
# protos have no go_package, so the Go packages are given here (M options). protoc is the
# one the Rust build uses (the protoc-bin-vendored crate), or $PROTOC; protoc-gen-go comes
# from this module's google.golang.org/protobuf (the version in go.mod), protoc-gen-go-grpc
# at the version below. internal/gen/stale_test.go fails when the checked-in stubs no
# longer describe ../proto.
set -euo pipefail
cd "$(dirname "$0")"

GRPC_GEN_VERSION=v1.5.1
MOD=github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/gen

protoc=${PROTOC:-}
if [[ -z $protoc ]]; then
  protoc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/protoc-bin-vendored-linux-x86_64-*/bin/protoc 2>/dev/null | sort -V | tail -1 || true)
fi
if [[ -z $protoc || ! -x $protoc ]]; then
  echo "no protoc: set PROTOC, or build the workspace once (cargo fetches protoc-bin-vendored)" >&2
  exit 1
fi
include=$(cd "$(dirname "$protoc")/../include" && pwd)

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
GOBIN=$bin go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$GRPC_GEN_VERSION"

m="Mfanout/admin/v1/admin.proto=$MOD/fanout/admin/v1;adminv1,Mfanout/v1/fanout.proto=$MOD/fanout/v1;fanoutv1"
rm -rf internal/gen/fanout
mkdir -p internal/gen
PATH="$bin:$PATH" "$protoc" -I ../proto -I "$include" \
  --go_out=internal/gen --go_opt=module="$MOD" --go_opt="$m" \
  --go-grpc_out=internal/gen --go-grpc_opt=module="$MOD" --go-grpc_opt="$m" \
  fanout/admin/v1/admin.proto fanout/v1/fanout.proto
echo "generated: $(cd internal/gen && find fanout -name '*.go' | sort | tr '\n' ' ')"
