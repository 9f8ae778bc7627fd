"""The stubs the package ships (src/fanout_subscriber/_proto, written by generate.sh) match
proto/: the FileDescriptorProto embedded in the generated module is compared with one compiled
now from the repository's proto/fanout/v1/fanout.proto. Descriptors, not source text, so a
different grpcio-tools version does not make them look stale (a changed comment does not
either); a changed field, message, enum, service or option does."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from fanout_subscriber._proto import fanout_pb2, fanout_pb2_grpc

PACKAGE = Path(__file__).resolve().parents[1]
PROTO = PACKAGE.parents[1] / "proto"


def default_json_name(name: str) -> str:
    """protoc's JSON name of a field: underscores dropped, the letter after each capitalised."""
    out, upper = [], False
    for c in name:
        if c == "_":
            upper = True
        else:
            out.append(c.upper() if upper else c)
            upper = False
    return "".join(out)


def normalized(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """``file`` without what generators differ on and proto/ does not say: a field's
    ``json_name`` when it is the default one (protoc writes it into descriptor sets, the Python
    generator leaves it out) and source info."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    copy.ClearField("source_code_info")

    def fields(message: descriptor_pb2.DescriptorProto) -> None:
        for f in list(message.field) + list(message.extension):
            if f.json_name == default_json_name(f.name):
                f.ClearField("json_name")
        for nested in message.nested_type:
            fields(nested)

    for message in copy.message_type:
        fields(message)
    for f in copy.extension:
        if f.json_name == default_json_name(f.name):
            f.ClearField("json_name")
    return copy


def compiled_now() -> descriptor_pb2.FileDescriptorProto:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools compiles proto/ (pip install grpcio-tools)")
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        descriptor_set = Path(out) / "fanout.pb"
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO}",
                f"-I{include}",
                f"--descriptor_set_out={descriptor_set}",
                "fanout/v1/fanout.proto",
            ]
        )
        assert status == 0, f"protoc failed on {PROTO}/fanout/v1/fanout.proto"
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    (fresh,) = [f for f in files.file if f.name == "fanout/v1/fanout.proto"]
    return fresh


def test_the_generated_stubs_match_proto() -> None:
    shipped = normalized(descriptor_pb2.FileDescriptorProto.FromString(fanout_pb2.DESCRIPTOR.serialized_pb))
    fresh = normalized(compiled_now())
    assert shipped == fresh, (
        "src/fanout_subscriber/_proto is stale: proto/fanout/v1/fanout.proto changed. "
        "Run clients/python/generate.sh and commit what it writes."
    )


def test_the_declared_dependencies_cover_what_the_stubs_check_at_import() -> None:
    pyproject = (PACKAGE / "pyproject.toml").read_text()
    grpc_needed = fanout_pb2_grpc.GRPC_GENERATED_VERSION
    assert f'"grpcio>={grpc_needed}"' in pyproject, f"pyproject.toml must require grpcio>={grpc_needed}"
    source = (PACKAGE / "src/fanout_subscriber/_proto/fanout_pb2.py").read_text()
    match = re.search(r"^# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", source, re.M)
    assert match, "fanout_pb2.py names the protobuf version that generated it"
    major, minor, patch = match.groups()
    assert f'"protobuf>={major}.{minor}.{patch},<{int(major) + 1}"' in pyproject, (
        f"pyproject.toml must require protobuf>={major}.{minor}.{patch},<{int(major) + 1}"
    )
