"""Triton's own Python client drives the repository API of a real server, unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from load_tests.server import ServerProcess

TOKEN = "triton-client-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.server
def test_tritonclient_repository_calls(model_root: Path) -> None:
    args = ["--model-dir", str(model_root), "--model-control-mode", "explicit", "--load-model", "sst2-lstm",
            "--admin-token", TOKEN]
    with ServerProcess(args) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        index = {e["name"]: e for e in client.get_model_repository_index(headers=HEADERS)}
        assert index["sst2-lstm"]["state"] == "READY"
        assert index["fashion-cnn"]["state"] == "UNAVAILABLE"
        assert client.is_model_ready("sst2-lstm")
        assert not client.is_model_ready("fashion-cnn")

        client.load_model("fashion-cnn", headers=HEADERS)
        assert client.is_model_ready("fashion-cnn")
        client.unload_model("fashion-cnn", headers=HEADERS)
        assert not client.is_model_ready("fashion-cnn")
        states = {e["name"]: e["state"] for e in client.get_model_repository_index(headers=HEADERS)}
        assert states == {"fashion-cnn": "UNAVAILABLE", "sst2-lstm": "READY"}

        with pytest.raises(InferenceServerException, match="admin token"):
            client.load_model("fashion-cnn", headers={"Authorization": "Bearer wrong"})
        with pytest.raises(InferenceServerException, match="no model 'nope'"):
            client.load_model("nope", headers=HEADERS)
