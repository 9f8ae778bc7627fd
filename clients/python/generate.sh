#!/usr/bin/env bash
# Generates the fanout.v1 stubs the library ships, from the repository's proto/ into
# src/fanout_subscriber/_proto/ (fanout_pb2.py, fanout_pb2.pyi, fanout_pb2_grpc.py), with the
# grpc stub's import made relative so the modules work inside the package. Needs grpcio-tools:
#   pip install grpcio-tools
# PYTHON picks the interpreter (default python3), e.g. PYTHON=.venv/bin/python ./generate.sh
# The generated files are checked in; tests/test_generated.py fails when they no longer match
# proto/ (run this script, then commit what it wrote).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
proto="$(cd "$here/../../proto" && pwd)"
python="${PYTHON:-python3}"
out="$here/src/fanout_subscriber/_proto"

# google/protobuf/duration.proto and timestamp.proto ship with grpcio-tools.
include="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m grpc_tools.protoc \
  -I "$proto" \
  -I "$include" \
  --python_out="$work" \
  --pyi_out="$work" \
  --grpc_python_out="$work" \
  "$proto/fanout/v1/fanout.proto"

mkdir -p "$out"
for file in fanout_pb2.py fanout_pb2.pyi fanout_pb2_grpc.py; do
  # `from fanout.v1 import fanout_pb2` only works with the output directory on sys.path;
  # inside the package the sibling module is imported relatively.
  sed -e 's/^from fanout\.v1 import fanout_pb2 as /from . import fanout_pb2 as /' \
    "$work/fanout/v1/$file" > "$out/$file"
done
if [ ! -f "$out/__init__.py" ]; then
  printf '"""Generated gRPC and protobuf modules of fanout.v1 (see generate.sh); not a public API."""\n' > "$out/__init__.py"
fi
echo "generated $out"
