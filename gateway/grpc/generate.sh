#!/usr/bin/env bash
# Regenerate grpc_predict_v2_pb2.py and .pyi from grpc_predict_v2.proto (committed, not built at
# install time: installing the gateway then needs no protobuf compiler, only the runtime).
#
# grpcio-tools 1.74.0 carries protoc 31.1, whose Python code needs protobuf >= 6.31.1 and, being
# of major version 6, < 7 (protobuf's runtime refuses or warns about code of another major): the
# `grpc` extra in pyproject.toml pins that range. Regenerating with another grpcio-tools means
# moving that range to match. The tools run in a throwaway venv, never the project's.
#
#     bash gateway/grpc/generate.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q 'grpcio-tools==1.74.0' 'protobuf>=6.31.1,<7'
# -I the repository root: the file registers as gateway/grpc/grpc_predict_v2.proto, a name no
# other package's descriptors use.
cd "$root"
"$tools/bin/python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
  gateway/grpc/grpc_predict_v2.proto
