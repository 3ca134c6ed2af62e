"""The gRPC benchmark floor: a bare grpcio asyncio server answering ModelInfer with the model.

`inference.GRPCInferenceService/ModelInfer` only, with the gateway's own messages: the first
raw input as FP32 of the shape sent, onnxruntime called inline on the event loop (uvloop, as the
gateway's), no thread hand-off, no validation, routing, metrics or tracing; the first output
back raw. Whatever the gateway's gRPC path costs beyond this is the price of its features
(grpc_bench.py).

    python loadtests/bench/grpc_floor.py --port 9001 [--model models/mlp/1/model.onnx]
"""

import argparse
import asyncio
import contextlib
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import uvloop

from gateway.grpc import grpc_predict_v2_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def session_of(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


async def serve(port: int, model: Path) -> None:
    session = session_of(model)
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    async def infer(request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:
        tensor = request.inputs[0]
        array = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tensor.shape)
        (scores,) = session.run([output_name], {input_name: array})
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name=output_name, datatype="FP32", shape=scores.shape)
        response.raw_output_contents.append(scores.tobytes())
        return response

    handler = grpc.unary_unary_rpc_method_handler(
        infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService", {"ModelInfer": handler}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "mlp" / "1" / "model.onnx")
    args = parser.parse_args()
    uvloop.install()  # the event loop uvicorn gives the gateway
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT: the benchmark is done with it
        asyncio.run(serve(args.port, args.model))


if __name__ == "__main__":
    main()
