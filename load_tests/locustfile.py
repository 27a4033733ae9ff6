"""Locust users for the task endpoints and the V2 endpoint, fed with real test images and sentences.

    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:8000
    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:8000 ImageUser V2BinaryUser

The StepLoad shape below drives the run (10 more users every 15 s up to 60, one more step,
then it stops by itself, about 90 s). Needs only locust: samples are JSON/TSV and the V2 pixel
scaling is read from the server's /v1/models (the manifest's preprocessing).
"""

from __future__ import annotations

import csv
import json
import random
import struct
from pathlib import Path

from locust import HttpUser, LoadTestShape, between, events, task

SAMPLES = Path(__file__).parent / "samples"
IMAGES = json.loads((SAMPLES / "fashion_test_images.json").read_text())["images"]
with (SAMPLES / "sst2_test_sentences.tsv").open(encoding="utf-8") as f:
    SENTENCES = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
PIXELS_PER_IMAGE = 28 * 28


class ImageUser(HttpUser):
    """fashion-cnn through the task endpoint: one raw image per request."""

    wait_time = between(0, 0.01)

    @task
    def predict(self) -> None:
        image = random.choice(IMAGES)
        rows = [image[r * 28 : (r + 1) * 28] for r in range(28)]
        self.client.post("/v1/models/fashion-cnn:predict", json={"instances": [rows]}, name="v1 image")


class TextUser(HttpUser):
    """sst2-lstm through the task endpoint: one sentence per request."""

    wait_time = between(0, 0.01)

    @task
    def predict(self) -> None:
        self.client.post("/v1/models/sst2-lstm:predict", json={"instances": [random.choice(SENTENCES)]},
                         name="v1 text")


class _V2User(HttpUser):
    abstract = True
    wait_time = between(0, 0.01)
    images_per_request = 8

    def on_start(self) -> None:
        models = self.client.get("/v1/models", name="v1 models").json()["models"]
        spec = next(m for m in models if m["name"] == "fashion-cnn")["preprocessing"]
        self.scale, self.mean, self.std = spec["scale"], spec["mean"], spec["std"]

    def pixels(self) -> list[float]:
        values: list[float] = []
        for image in random.sample(IMAGES, self.images_per_request):
            values.extend((p * self.scale - self.mean) / self.std for p in image)
        return values


class V2JsonUser(_V2User):
    """fashion-cnn through the V2 protocol with JSON tensors."""

    @task
    def infer(self) -> None:
        n = self.images_per_request
        body = {"inputs": [{"name": "pixels", "shape": [n, 1, 28, 28], "datatype": "FP32", "data": self.pixels()}]}
        self.client.post("/v2/models/fashion-cnn/infer", json=body, name="v2 json")


class V2BinaryUser(_V2User):
    """fashion-cnn through the V2 protocol with Triton binary tensors in and out."""

    @task
    def infer(self) -> None:
        n = self.images_per_request
        raw = struct.pack(f"<{n * PIXELS_PER_IMAGE}f", *self.pixels())
        header = json.dumps({
            "inputs": [{"name": "pixels", "shape": [n, 1, 28, 28], "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }).encode()
        self.client.post("/v2/models/fashion-cnn/infer", data=header + raw, name="v2 binary",
                         headers={"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"})


class StepLoad(LoadTestShape):
    """Add `step_users` every `step_s` seconds up to `max_users`, hold one step, then stop."""

    step_users, step_s, max_users = 10, 15, 60

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        steps = int(elapsed // self.step_s) + 1
        if steps * self.step_users > self.max_users + self.step_users:
            return None
        return min(steps * self.step_users, self.max_users), self.step_users


@events.quitting.add_listener
def _fail_on_errors(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """A headless run exits non-zero when any request failed."""
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
