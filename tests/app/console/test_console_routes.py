"""The console's routes: its page and files from the package, its live figures from the
collectors /metrics exposes, the recent traces, the API key, the setting that turns it off."""

from __future__ import annotations

import base64

from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from load_tests import samples
from tests.app.conftest import serving
from tests.conftest import MODELS

KEY = "console-key-1"


async def test_the_page_and_its_files_are_served_from_the_package() -> None:
    async with serving() as client:
        page = await client.get("/console")
        script = await client.get("/console/assets/console.js")
        image = await client.get("/console/assets/samples/bag.png")
        unknown = await client.get("/console/assets/../../settings.py")
        missing = await client.get("/console/assets/nothing.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="console/assets/console.js"' in page.text
    assert "https://" not in page.text + script.text  # nothing from elsewhere: works offline
    assert script.headers["content-type"].startswith("text/javascript")
    assert image.content.startswith(b"\x89PNG")
    assert unknown.status_code == missing.status_code == 404
    assert "no file" in missing.json()["error"]


async def test_the_summary_counts_what_metrics_counts() -> None:
    body = samples.v2_json(1, MODELS)
    async with serving() as client:
        for _ in range(5):
            assert (await client.post("/v2/models/fashion-cnn/infer", content=body)).status_code == 200
        bad = await client.post("/v2/models/fashion-cnn/infer", content=b"{")
        summary = (await client.get("/console/summary")).json()
        metrics = (await client.get("/metrics")).text
    assert bad.status_code == 400
    figures = summary["models"]["fashion-cnn"]
    counted = {(s.labels["endpoint"], s.labels["status"]): s.value for f in text_string_to_metric_families(metrics)
               for s in f.samples if s.name == "ortserve_requests_total" and s.labels["model"] == "fashion-cnn"}
    assert figures["requests"] == sum(counted.values()) >= 6
    assert figures["errors"] == sum(v for (_, status), v in counted.items() if not status.startswith("2")) >= 1
    assert figures["batches"] >= 5
    assert figures["batch_rows"] >= 5
    assert figures["latency"][-1] == [None, figures["latency_count"]]  # cumulative, +Inf last
    bounds = [b for b, _ in figures["latency"][:-1]]
    assert bounds == sorted(bounds)
    assert summary["workers"] == 1
    assert "sst2-lstm" in summary["models"]


async def test_traces_say_when_tracing_is_off_and_list_the_slowest_when_on() -> None:
    async with serving() as client:
        off = (await client.get("/console/traces")).json()
    assert off == {"tracing": False, "sample": 1.0, "traces": []}
    async with serving(tracing=True) as client:
        await client.post("/v2/models/fashion-cnn/infer", content=samples.v2_json(8, MODELS))
        await client.get("/console/summary")  # the console's own calls are not slow requests to show
        on = (await client.get("/console/traces")).json()
    [trace] = on["traces"]
    assert trace["name"] == "POST /v2/models/{name}/infer"
    assert trace["attributes"]["model"] == "fashion-cnn"
    assert {"decode", "queue", "compute", "encode", "batch"} <= {s["name"] for s in trace["spans"]}


async def test_behind_the_api_key_a_browser_is_asked_for_it() -> None:
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    async with serving(api_keys=[KEY]) as client:
        refused = await client.get("/console")
        summary = await client.get("/console/summary")
        signed_in = await client.get("/console", headers={"Authorization": f"Basic {basic}"})
        bearer = await client.get("/console/summary", headers={"Authorization": f"Bearer {KEY}"})
        wrong = await client.get("/console", headers={"Authorization": "Basic " + base64.b64encode(b"a:b").decode()})
        garbage = await client.get("/console", headers={"Authorization": "Basic %%%"})
        # the page's own calls carry the browser's Basic credentials to the inference API
        predicted = await client.post("/v1/models/sst2-lstm:predict", json={"instances": ["fine"]},
                                      headers={"Authorization": f"Basic {basic}"})
    assert refused.status_code == summary.status_code == wrong.status_code == garbage.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Basic realm="ortserve"')
    assert "API key" in refused.json()["error"]
    assert signed_in.status_code == bearer.status_code == predicted.status_code == 200


async def test_the_console_can_be_turned_off() -> None:
    apps: list[FastAPI] = []
    async with serving(apps.append, console=False) as client:
        page = await client.get("/console")
        summary = await client.get("/console/summary")
    assert page.status_code == summary.status_code == 404
    assert "console is off" in page.json()["error"]
