#!/usr/bin/env bash
# Replicas behind HAProxy, really run (docker-compose.replicas.yml, with podman-compose):
#   1. (MEASURE=1) single-image throughput through HAProxy with 1, then 2 replicas (wrk, c64);
#   2. Prometheus scrapes every replica;
#   3. gRPC through HAProxy: unary calls on one connection reach every replica, and a stream's
#      messages sent one at a time are each answered while it is open;
#   4. a rolling restart under load: each replica in turn gets SIGTERM, drains, exits, is
#      started again and becomes healthy, while load runs through HAProxy; any failed request
#      (a status other than 200, or a connection error) fails the check.
# Images that cannot be pulled are stood in by Debian's packages (haproxy, prometheus) under
# the compose files' image names. Everything binds 127.0.0.1. Run as root:
#   bash deploy/replicas_check.sh                        # the rolling restart (CI runs it)
#   MEASURE=1 bash deploy/replicas_check.sh              # and the 1- vs 2-replica figures
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LB_PORT=${LB_PORT:-18080}
LB_GRPC_PORT=${LB_GRPC_PORT:-18081}
PROJECT=ortserve-lb
LOAD_SECONDS=${LOAD_SECONDS:-60}
# shellcheck source=deploy/podman_env.sh
source deploy/podman_env.sh
FILES=(-f docker-compose.yml -f docker-compose.replicas.yml)
compose() { (cd "$WORK/stack" && GRAFANA_ADMIN_PASSWORD=unused LB_PORT=$LB_PORT LB_GRPC_PORT=$LB_GRPC_PORT "$BIN/podman-compose" -p "$PROJECT" "${FILES[@]}" "$@"); }
cleanup() {
  [ -d "$WORK/stack" ] && compose down -t 45 >/dev/null 2>&1 || true
  # podman-compose's down knows only the first container of a scaled service: the others
  # would go on running after the check.
  podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f -t 5 >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

[ "${BUILD:-1}" = 1 ] && build_image
# The official image's default command, with Debian's haproxy:
stand_in "$(compose_image haproxy docker-compose.replicas.yml)" haproxy '["/usr/sbin/haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
stand_in "$(compose_image prometheus docker-compose.yml)" prometheus '["/usr/bin/prometheus"]'
mkdir -p "$WORK/stack"
cp -r docker-compose.yml docker-compose.replicas.yml deploy models "$WORK/stack/"

replicas() { podman ps --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=ortserve" --format '{{.Names}}' | sort; }
lb_container() { podman ps --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=lb" --format '{{.Names}}'; }
wait_healthy() {  # container
  for _ in $(seq 1 120); do
    podman healthcheck run "$1" >/dev/null 2>&1 && return 0
    sleep 1
  done
  podman logs "$1" | tail -20; return 1
}
wait_lb() {
  for _ in $(seq 1 60); do
    curl -fsS -o /dev/null "http://127.0.0.1:$LB_PORT/v2/health/ready" 2>/dev/null && return 0
    sleep 1
  done
  echo "the load balancer never answered ready" >&2; podman logs "$(lb_container)" | tail -20; return 1
}
up() {  # replicas
  compose up -d --no-build --scale "ortserve=$1" ortserve lb prometheus >/dev/null 2>&1
  for c in $(replicas); do wait_healthy "$c"; done
  sleep 4  # HAProxy re-reads DNS every 2 s and checks readiness every second
  wait_lb
  echo "$(replicas | wc -l) replica(s) up behind HAProxy on 127.0.0.1:$LB_PORT"
}
load() {  # seconds concurrency [extra args]
  "$PY" -m load_tests.through_lb --url "http://127.0.0.1:$LB_PORT" --seconds "$1" --concurrency "$2" "${@:3}"
}

if [ "${MEASURE:-0}" = 1 ]; then
  log "throughput through HAProxy: 1 replica, then 2 (single image, c64, wrk)"
  up 1
  load "${MEASURE_SECONDS:-15}" 64 --out "$ROOT/bench-results/lb-1-replica.json"
  up 2
  load "${MEASURE_SECONDS:-15}" 64 --out "$ROOT/bench-results/lb-2-replicas.json"
else
  up 2
fi

log "Prometheus scrapes every replica"
for _ in $(seq 1 60); do
  targets=$(curl -fsS "http://127.0.0.1:9090/api/v1/query?query=count(up%7Bjob%3D%22ortserve%22%7D%3D%3D1)" 2>/dev/null \
    | "$PY" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null || echo 0)
  [ "$targets" = 2 ] && break
  sleep 1
done
[ "$targets" = 2 ] || { echo "Prometheus sees $targets replicas up, not 2" >&2; exit 1; }
echo "Prometheus: up == 1 for both replicas"

log "gRPC through HAProxy (HTTP/2 to the replicas, balanced per call)"
if REPLICAS="$(replicas)" TARGET="127.0.0.1:$LB_GRPC_PORT" "$PY" - <<'PYEOF'
import os, re, subprocess, time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc

METRICS = ('import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8000/metrics").read().decode())')


def answered(replica: str) -> int:
    text = subprocess.run(["podman", "exec", replica, "python3", "-c", METRICS], capture_output=True, text=True,
                          check=True).stdout
    found = re.search(r'endpoint="grpc.ModelInfer",model="fashion-cnn",status="OK"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


replicas = os.environ["REPLICAS"].split()
with grpc.insecure_channel(os.environ["TARGET"]) as channel:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    request = pb.ModelInferRequest(model_name="fashion-cnn", raw_input_contents=[np.zeros((1, 1, 28, 28), np.float32).tobytes()])
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 1, 28, 28])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    # Every call on this one connection; HAProxy's gRPC backend may still be checking a
    # replica it has just found, so rounds of calls until each replica has answered some.
    for _ in range(30):
        shapes = {tuple(stub.ModelInfer(request, timeout=10).outputs[0].shape) for _ in range(20)}
        assert shapes == {(1, 10)}, shapes
        counts = {r: answered(r) for r in replicas}
        if all(counts.values()):
            break
        time.sleep(0.5)
print(f"gRPC through HAProxy: health SERVING; calls on one connection answered by each replica: {counts}")
assert all(counts.values()), f"not balanced per call: {counts}"

# A stream, as a client that waits for each answer before it sends the next message: each
# must be answered while the stream is open (HAProxy must not wait for the request whole).
import threading

answered_one = threading.Event()


def one_at_a_time():
    for _ in range(3):
        answered_one.clear()
        yield request
        if not answered_one.wait(10):
            return


with grpc.insecure_channel(os.environ["TARGET"]) as channel:
    answers = []
    for answer in pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(one_at_a_time(), timeout=30):
        assert not answer.error_message, answer.error_message
        answers.append(answer)
        answered_one.set()
assert len(answers) == 3, f"a stream through HAProxy answered {len(answers)} of 3 messages sent one at a time"
print("gRPC stream through HAProxy: 3 messages sent one at a time, each answered while the stream was open")
PYEOF
then :; else
  podman logs "$(lb_container)" 2>&1 | tail -20
  exit 1
fi

log "rolling restart under load"
mkdir -p "$ROOT/bench-results"
load "$LOAD_SECONDS" 16 --every-request --out "$ROOT/bench-results/rolling-restart.json" >/dev/null &
LOAD=$!
sleep 5
for c in $(replicas); do
  # podman stop sends SIGTERM and waits for the exit (SIGKILL after 45 s, the compose
  # stop_grace_period's worth): an orchestrator's stop. A stop by hand also keeps the
  # restart policy from starting it again behind our back.
  echo "$(date +%T) SIGTERM $c"
  podman stop -t 45 "$c" >/dev/null
  echo "$(date +%T) $c exited with $(podman inspect "$c" --format '{{.State.ExitCode}}'); starting it again"
  podman start "$c" >/dev/null
  wait_healthy "$c"
  echo "$(date +%T) $c healthy"
  sleep 3
done
wait "$LOAD"
"$PY" - "$ROOT/bench-results/rolling-restart.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"rolling restart: {r['requests']:,} requests in {r['seconds']} s at c{r['concurrency']}, "
      f"{r['ok']:,} answered 200, failed: {r['failed'] or 'none'}; p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
sys.exit(1 if r["failed"] or r["requests"] == 0 else 0)
PYEOF
log "replicas check passed"
