"""A closed-loop gRPC load: `concurrency` callers on one channel, each sending ModelInfer again
as soon as it is answered, for `seconds`; prints the line wrk's infer.lua prints.

The request (one row of FP32 values, raw, as tritonclient.grpc sends) is serialized once and
answers are not parsed: the client spends its core on RPCs, not on protobuf.

    python loadtests/bench/grpc_load.py 127.0.0.1:9001 --concurrency 32 --seconds 4
"""

import argparse
import asyncio
import time

import grpc
import numpy as np

from gateway.grpc import grpc_predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(model: str, features: int) -> bytes:
    """The values infer.lua sends over HTTP, as one raw FP32 row."""
    values = np.array([round((i % 7) / 7, 3) for i in range(1, features + 1)], np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, features])
    request.raw_input_contents.append(values.tobytes())
    return request.SerializeToString()


async def run(target: str, concurrency: int, seconds: float, model: str, features: int) -> str:
    body = request_bytes(model, features)
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        started = time.perf_counter()
        end = started + seconds

        async def caller() -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < end:
                try:
                    await call(body, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        duration = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e6 if latencies else (0, 0)
    return (
        f"RESULT requests={len(latencies)} errors={errors} duration_us={int(duration * 1e6)} "
        f"p50_us={int(p50)} p99_us={int(p99)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--features", type=int, default=64)
    args = parser.parse_args()
    print(asyncio.run(run(args.target, args.concurrency, args.seconds, args.model, args.features)))


if __name__ == "__main__":
    main()
