"""The benchmark floor: a minimal Starlette + uvicorn + orjson app serving the same model.

It speaks the same OIP v2 JSON body as the gateway for one FP32 input, calls onnxruntime inline on
the event loop (no thread hand-off, no validation, no routing, no metrics), and answers the same
response shape. Whatever the gateway costs beyond this is the price of its features.

    python loadtests/bench/floor.py --port 8001 [--model models/mlp/1/model.onnx] [--name mlp]

It answers on `/v2/models/NAME/infer`; the body may hold any batch and width the model takes
(the benchmark sends 64 values to `mlp` and 512 to `heavy`).
"""

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[2]


def build(model: Path, name: str = "mlp") -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    async def infer(request: Request) -> Response:
        document = orjson.loads(await request.body())
        tensor = document["inputs"][0]
        array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        (scores,) = session.run([output_name], {input_name: array})
        body = {
            "model_name": name,
            "model_version": "1",
            "outputs": [
                {
                    "name": output_name,
                    "datatype": "FP32",
                    "shape": list(scores.shape),
                    "data": scores.reshape(-1),
                }
            ],
        }
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
        )

    return Starlette(routes=[Route(f"/v2/models/{name}/infer", infer, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "mlp" / "1" / "model.onnx")
    parser.add_argument("--name", default="mlp", help="the model's name in the route")
    args = parser.parse_args()
    app = build(args.model, args.name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
