"""Locust traffic of the rollout tests and measurements: one iris row per request, spread
over the models named in GATEWAY_TEST_MODELS (comma-separated). Each request is named after its
model, so locust's CSV counts requests and failures per model."""

import os
import random

from locust import FastHttpUser, between, task
from sklearn.datasets import load_iris

MODELS = os.environ["GATEWAY_TEST_MODELS"].split(",")
ROWS = load_iris().data.astype(float).tolist()


class Caller(FastHttpUser):
    wait_time = between(0.001, 0.003)

    @task
    def infer(self) -> None:
        model = random.choice(MODELS)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                            "data": [random.choice(ROWS)]}]}  # fmt: skip
        with self.client.post(
            f"/v2/models/{model}/infer", json=body, name=model, catch_response=True
        ) as response:
            if response.status_code != 200:
                variant = response.headers.get("x-gateway-variant", "?")
                response.failure(f"{response.status_code} from {variant}")
