#!/usr/bin/env bash
# Generates the Python stubs of fanout.v1 from the repository's proto/ into gen/ next to this
# script (gen/fanout/v1/fanout_pb2.py and fanout_pb2_grpc.py). Needs grpcio-tools:
#   pip install grpcio grpcio-tools
# PYTHON picks the interpreter (default python3), e.g. PYTHON=.venv/bin/python ./generate.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
proto="$(cd "$here/../../proto" && pwd)"
python="${PYTHON:-python3}"
out="$here/gen"

# google/protobuf/duration.proto and timestamp.proto ship with grpcio-tools.
include="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

mkdir -p "$out"
"$python" -m grpc_tools.protoc \
  -I "$proto" \
  -I "$include" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  "$proto/fanout/v1/fanout.proto"

# Regular packages, so `from fanout.v1 import fanout_pb2` works with gen/ on sys.path.
touch "$out/fanout/__init__.py" "$out/fanout/v1/__init__.py"
echo "generated $out/fanout/v1"
