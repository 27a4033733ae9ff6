"""Locust users for the task endpoints and the V2 endpoint, fed with real test images and sentences.

    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:8000
    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:8000 ImageUser V2BinaryUser

The StepLoad shape below drives the run (10 more users every 15 s up to 60, one more step,
then it stops by itself, about 90 s). Needs only locust: samples are JSON/TSV, and the image
size, input name and pixel scaling are read from the server's /v1/models (the manifest's).
"""

from __future__ import annotations

import csv
import json
import random
import struct
import time
import urllib.request
from pathlib import Path

from locust import HttpUser, LoadTestShape, between, events, task

SAMPLES = Path(__file__).parent / "samples"
IMAGES = json.loads((SAMPLES / "fashion_test_images.json").read_text())["images"]
with (SAMPLES / "sst2_test_sentences.tsv").open(encoding="utf-8") as f:
    SENTENCES = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def describe_fashion_cnn(user: HttpUser) -> dict:
    """The served model's description: its input, image size and pixel scaling."""
    models = user.client.get("/v1/models", name="v1 models").json()["models"]
    return next(m for m in models if m["name"] == "fashion-cnn")


class ImageUser(HttpUser):
    """fashion-cnn through the task endpoint: one raw image per request."""

    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.width = describe_fashion_cnn(self)["preprocessing"]["width"]

    @task
    def predict(self) -> None:
        image = random.choice(IMAGES)
        w = self.width
        rows = [image[r * w : (r + 1) * w] for r in range(len(image) // w)]
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
        model = describe_fashion_cnn(self)
        spec, pixels = model["preprocessing"], model["inputs"][0]
        self.output_name = self.client.get("/v2/models/fashion-cnn", name="v2 metadata").json()["outputs"][0]["name"]
        self.scale, self.mean, self.std = spec["scale"], spec["mean"], spec["std"]
        self.input_name, self.item_shape = pixels["name"], pixels["shape"][1:]

    def shape(self) -> list[int]:
        return [self.images_per_request, *self.item_shape]

    def pixels(self) -> list[float]:
        values: list[float] = []
        for image in random.sample(IMAGES, self.images_per_request):
            values.extend((p * self.scale - self.mean) / self.std for p in image)
        return values


class V2JsonUser(_V2User):
    """fashion-cnn through the V2 protocol with JSON tensors."""

    @task
    def infer(self) -> None:
        body = {"inputs": [{"name": self.input_name, "shape": self.shape(), "datatype": "FP32", "data": self.pixels()}]}
        self.client.post("/v2/models/fashion-cnn/infer", json=body, name="v2 json")


class V2BinaryUser(_V2User):
    """fashion-cnn through the V2 protocol with Triton binary tensors in and out."""

    @task
    def infer(self) -> None:
        values = self.pixels()
        raw = struct.pack(f"<{len(values)}f", *values)
        header = json.dumps({
            "inputs": [{"name": self.input_name, "shape": self.shape(), "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": self.output_name, "parameters": {"binary_data": True}}],
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


READY_WAIT_S = 180


@events.test_start.add_listener
def _wait_until_ready(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Start the load once the server answers ready (bounded: a compose stack starts Locust
    beside a server that may still be loading its models), so no request fails for that."""
    host = environment.host
    deadline = time.monotonic() + READY_WAIT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{host}/v2/health/ready", timeout=2):  # noqa: S310 (the host given)
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{host} was not ready within {READY_WAIT_S} s")


@events.quitting.add_listener
def _fail_on_errors(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """A headless run exits non-zero when any request failed."""
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
