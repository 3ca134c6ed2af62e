"""The benchmark's `mlp` model served by KServe's Python model server, as its users write one.

A custom `kserve.Model` whose `predict` runs onnxruntime on the Open Inference Protocol v2
request (`POST /v2/models/{name}/infer`), started by `kserve.ModelServer` with one uvicorn
worker. Runs in the KServe venv that `loadtests/bench/peers.py` makes (peers/kserve.txt):

    python kserve_server.py --model_name mlp --model_path model.onnx --http_port 8080 \
        --grpc_port 8081 --workers 1 --enable_latency_logging false
"""

import argparse
import logging

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import generate_uuid


class OnnxModel(Model):
    """One onnxruntime session, one intra-op thread (like the gateway and the floor)."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        array = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        (scores,) = self.session.run([self.output_name], {self.input_name: array})
        output = InferOutput(
            name=self.output_name, shape=list(scores.shape), datatype="FP32", data=scores
        )
        return InferResponse(
            response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=[output]
        )


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name, args.model_path)
    server = ModelServer()  # ports, workers and latency logging from the command line
    # The gateway writes no line per request by default (access_log: false); KServe's access
    # log and per-request timing lines are turned down to match, after ModelServer set them up.
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
