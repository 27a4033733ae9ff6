#!/usr/bin/env bash
# Container smoke test, for machines with podman but no Docker engine and no registry
# (see README "Deployment"). It:
#   1. lints the Dockerfile (hadolint) and validates the compose files (compose-spec schema);
#   2. builds the CPU image from the unmodified Dockerfile on a locally built Debian base;
#   3. runs it, waits for the HEALTHCHECK, sends a real prediction to each model and checks it;
#   4. sends SIGTERM while requests are queued and checks every one of them is answered;
#   5. runs the compose stack as the README says (podman-compose up -d --build) and checks
#      that it starts without the load profile, Prometheus scrapes the service (Triton's
#      metric names included) and the service answers; then tears everything down.
# Everything binds 127.0.0.1. Run as root: bash deploy/smoke_container.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NAME=ortserve-smoke-$$
PORT=${SMOKE_PORT:-18000}
GRPC_PORT=${SMOKE_GRPC_PORT:-18001}
# shellcheck source=deploy/podman_env.sh
source deploy/podman_env.sh

cleanup() {
  podman rm -f "$NAME" >/dev/null 2>&1 || true
  if [ -n "${COMPOSE_UP:-}" ]; then
    (cd "$WORK/stack" && GRAFANA_ADMIN_PASSWORD=x "$BIN/podman-compose" down -t 5 >/dev/null 2>&1) || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log "lint"
"$BIN/hadolint" Dockerfile
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.gpu.yml
# The replicas override uses compose's !override tag, which a plain YAML schema check cannot
# read: validate the merged configuration instead.
GRAFANA_ADMIN_PASSWORD=x "$BIN/podman-compose" -f docker-compose.yml -f docker-compose.replicas.yml config \
  >"$WORK/replicas-merged.yml" 2>/dev/null
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec "$WORK/replicas-merged.yml"

build_image
if podman run --rm --entrypoint python3 "$IMAGE" -c 'import torch' 2>/dev/null; then
  echo "torch is in the image" >&2; exit 1
fi
[ "$(podman run --rm --entrypoint id "$IMAGE" -u)" = 10001 ] || { echo "image runs as root" >&2; exit 1; }

log "run and wait for the healthcheck"
# Batches wait 1.5 s for company even when the model is idle, so that requests are still
# queued when SIGTERM arrives below.
# As the compose file runs it: read-only root, no capabilities, no privilege gain, limits.
# (Both ulimits are named: given one, podman fills in the other with a limit that this
# machine's runc may not set for a process without capabilities.) The HTTP port is given as
# a flag, not the image's ORTSERVE_PORT: the HEALTHCHECK must find it there too
# (app/health_probe.py reads where the server says it listens).
podman run -d --name "$NAME" --init -p "127.0.0.1:$PORT:9000" -p "127.0.0.1:$GRPC_PORT:8001" \
  --read-only --tmpfs /tmp:size=64m,mode=1777 --cap-drop ALL --security-opt no-new-privileges \
  --pids-limit 256 --ulimit nofile=16384:16384 --ulimit nproc=4096:4096 \
  -e ORTSERVE_MAX_QUEUE_DELAY_MS=1500 -e ORTSERVE_MAX_BATCH_SIZE=256 -e ORTSERVE_IDLE_DISPATCH=false \
  "$IMAGE" python3 -m app --port 9000 >/dev/null
for _ in $(seq 1 90); do
  if podman healthcheck run "$NAME" >/dev/null 2>&1; then break; fi
  sleep 1
done
podman healthcheck run "$NAME" >/dev/null || { podman logs "$NAME"; exit 1; }
echo healthy

log "predictions, then SIGTERM while requests are queued"
SMOKE_URL="http://127.0.0.1:$PORT" SMOKE_GRPC="127.0.0.1:$GRPC_PORT" CONTAINER="$NAME" "$PY" - <<'EOF'
import json, os, subprocess, threading, time, urllib.request

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc
from pathlib import Path
from app.manifest import latest_version, load_manifest
from app.preprocess import normalize_pixels

url, name = os.environ["SMOKE_URL"], os.environ["CONTAINER"]
samples = json.load(open("load_tests/samples/fashion_test_images.json"))

def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.load(r)

# Real test images: the model must get most of them right.
images = [[img[r * 28:(r + 1) * 28] for r in range(28)] for img in samples["images"][:32]]
status, body = post("/v1/models/fashion-cnn:predict", {"instances": images})
right = sum(p["index"] == y for p, y in zip(body["predictions"], samples["labels"]))
assert status == 200 and right >= 26, (status, right)
print(f"fashion-cnn: {right}/32 test images right")
status, body = post("/v1/models/sst2-lstm:predict",
                    {"instances": ["a moving , beautifully acted film .", "a dull , tedious mess ."]})
assert [p["label"] for p in body["predictions"]] == ["positive", "negative"], body
print("sst2-lstm:", [p["label"] for p in body["predictions"]])

# The console's files are package data: in the installed (not editable) package of the image.
page = urllib.request.urlopen(url + "/console").read().decode()
script = urllib.request.urlopen(url + "/console/assets/console.js").read()
image = urllib.request.urlopen(url + "/console/assets/samples/bag.png").read()
assert "console/assets/console.js" in page and len(script) > 1000 and image.startswith(b"\x89PNG"), page[:200]
print("console: page, script and test images served from the installed package")

# gRPC on the image's second port: health, then the same images over KServe V2 gRPC.
with grpc.insecure_channel(os.environ["SMOKE_GRPC"]) as channel:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    manifest = load_manifest(latest_version(Path("models/fashion-cnn")))
    raw = normalize_pixels(np.asarray(images, np.uint8), manifest.preprocessing)  # as the V1 route does
    request = pb.ModelInferRequest(model_name="fashion-cnn", raw_input_contents=[raw.tobytes()])
    request.inputs.add(name="pixels", datatype="FP32", shape=raw.shape)
    answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    logits = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(list(answer.outputs[0].shape))
right = int((logits.argmax(1) == np.asarray(samples["labels"][:32])).sum())
assert right >= 26, right
print(f"gRPC: health SERVING; fashion-cnn {right}/32 test images right")

results = []
def one():
    try:
        results.append(post("/v1/models/fashion-cnn:predict", {"instances": [images[0]]})[0])
    except Exception as e:  # noqa: BLE001
        results.append(repr(e))
threads = [threading.Thread(target=one) for _ in range(20)]
for t in threads:
    t.start()
deadline = time.time() + 20
while time.time() < deadline:  # wait until all 20 are queued inside the server
    metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    if 'ortserve_queue_depth{model="fashion-cnn"} 20.0' in metrics:
        break
    time.sleep(0.02)
else:
    raise SystemExit("requests never queued")
subprocess.run(["podman", "kill", "--signal", "TERM", name], check=True, capture_output=True)
for t in threads:
    t.join()
assert results == [200] * 20, results
print("SIGTERM: 20/20 queued requests answered")
EOF
podman wait "$NAME" >/dev/null
# Read the logs whole first: `podman logs | grep -q` fails under pipefail when grep exits early.
logs=$(podman logs "$NAME" 2>&1)
grep -q "Application shutdown complete" <<<"$logs" || { echo "$logs"; exit 1; }
echo "container stopped cleanly"

log "compose: the README's command, podman-compose up -d --build"
# Prometheus and Grafana cannot be pulled here: stand in Debian's prometheus under the
# image name the compose file uses (with the official image's entrypoint), and for Grafana,
# which Debian does not package, a placeholder web server on its port (its dashboards are
# validated offline instead). The stack runs under a containers.conf with no default
# ulimits, as on a user's machine: the compose file's own limits must be enough.
stand_in "$(compose_image prometheus docker-compose.yml)" prometheus '["/usr/bin/prometheus"]'
stand_in "$(compose_image grafana docker-compose.yml)" python3 '["python3", "-m", "http.server", "3000"]'
mkdir -p "$WORK/stack"
git ls-files -z | xargs -0 cp --parents -t "$WORK/stack"
cd "$WORK/stack"
printf '[engine]\nruntime = "runc"\n' >"$WORK/compose-containers.conf"
COMPOSE_UP=1
CONTAINERS_CONF=$WORK/compose-containers.conf GRAFANA_ADMIN_PASSWORD=smoke-$$ ORTSERVE_PORT=$PORT ORTSERVE_GRPC_PORT=$GRPC_PORT \
  timeout 600 "$BIN/podman-compose" up -d --build >"$WORK/compose-up.log" 2>&1 ||
  { tail -40 "$WORK/compose-up.log"; exit 1; }
running=$(podman ps --filter label=io.podman.compose.project=ortserve --format '{{.Names}}' | sort | tr '\n' ' ')
[ "$running" = "ortserve_grafana_1 ortserve_ortserve_1 ortserve_prometheus_1 " ] ||
  { echo "running: $running (locust belongs to the load profile only)"; exit 1; }
# prometheus_reaches SECONDS QUERY: whether Prometheus answers the (URL-encoded) query with
# a first value of at least 1 within SECONDS.
prometheus_reaches() {
  for _ in $(seq 1 "$1"); do
    if curl -fsS "http://127.0.0.1:9090/api/v1/query?query=$2" 2>/dev/null \
         | "$PY" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; sys.exit(0 if r and float(r[0]["value"][1]) >= 1 else 1)' 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  return 1
}
prometheus_reaches 120 "up%7Bjob%3D%22ortserve%22%7D" ||
  { GRAFANA_ADMIN_PASSWORD=x "$BIN/podman-compose" logs; exit 1; }
echo "Prometheus scrapes ortserve: up == 1"
curl -fsS "http://127.0.0.1:$PORT/v1/models/sst2-lstm:predict" -d '{"instances": ["a fine film"]}' >/dev/null
echo "the service answers on 127.0.0.1:$PORT"
# Triton's metric names (counters written without _total), as a real Prometheus stores them.
prometheus_reaches 60 "nv_inference_request_success%7Bmodel%3D%22sst2-lstm%22%7D" ||
  { curl -fsS "http://127.0.0.1:$PORT/metrics" | grep nv_inference_request || true; exit 1; }
echo "Prometheus has Triton's nv_inference_request_success for the request"
cd "$ROOT"
log "container smoke test passed"
