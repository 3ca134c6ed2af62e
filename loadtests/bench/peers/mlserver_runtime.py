"""The benchmark's `mlp` model served by MLServer, as its users write a custom runtime.

An `MLModel` whose `predict` runs onnxruntime on the Open Inference Protocol v2 request
(`POST /v2/models/{name}/infer`). `loadtests/bench/peers.py` writes the `settings.json` and
`model-settings.json` that name it (`"implementation": "mlserver_runtime.OnnxRuntime"`) and
starts `mlserver start` in the MLServer venv it makes (peers/mlserver.txt).
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    """One onnxruntime session, one intra-op thread (like the gateway and the floor)."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = await get_model_uri(self.settings)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        array = self.decode(payload.inputs[0], default_codec=NumpyCodec)
        (scores,) = self.session.run(
            [self.output_name], {self.input_name: array.astype(np.float32, copy=False)}
        )
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(self.output_name, scores)],
        )
