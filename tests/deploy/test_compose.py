"""The compose stack's own files, checked offline (deploy/smoke_container.sh runs the stack,
where Grafana itself cannot be pulled): the Grafana dashboard queries only metrics the
service exports, from the datasource provisioning names, and finds its dashboards where
compose mounts them."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics
from tests.conftest import ROOT

GRAFANA = ROOT / "deploy" / "grafana"


def queries(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [q for key, value in node.items() for q in ([value] if key == "expr" else queries(value))]
    if isinstance(node, list):
        return [q for item in node for q in queries(item)]
    return []


def exported_samples() -> set[str]:
    """Every sample name a fresh service's metrics expose (histograms' _bucket, _sum, _count too)."""
    from prometheus_client import generate_latest

    metrics = Metrics()
    metrics.requests.labels("m", "e", "200").inc()  # labelled families show samples once used
    metrics.request_latency.labels("m", "e").observe(0.1)
    metrics.batch_observer("m")  # creates the model's batch children
    metrics.queue_depth.labels("m").set(0)
    text = generate_latest(metrics.registry).decode()
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    # a histogram's buckets appear once observed; its family name says it has them
    names |= {f"{f.name}_bucket" for f in text_string_to_metric_families(text) if f.type == "histogram"}
    return names


def test_every_dashboard_query_reads_metrics_the_service_exports() -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "ortserve.json").read_text())
    used = {name for query in queries(dashboard) for name in re.findall(r"\bortserve_\w+", query)}
    assert used, "the dashboard has no queries of the service's metrics"
    missing = used - exported_samples()
    assert not missing, f"the dashboard queries metrics the service does not export: {sorted(missing)}"


def test_the_dashboard_uses_the_provisioned_datasource_and_path() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    dashboard = json.loads((GRAFANA / "dashboards" / "ortserve.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"] if isinstance(panel.get("datasource"), dict)}
    assert uids == {source["uid"]}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ortserve.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
