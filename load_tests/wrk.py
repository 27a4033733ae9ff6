"""Closed-loop load with wrk, the C load generator (`apt-get install wrk`), when installed.

On a 2-core machine the load generator shares the CPUs with the server. The asyncio
client (load_tests/client.py) needs about a core at 5,000 requests/s; wrk needs a tenth
of that, so the server, not the client, sets the numbers. Same payloads, same Summary.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from load_tests.client import Payload
from load_tests.stats import Summary, cpu_seconds

# wrk runs this Lua: the request from the payload (formatted with its file and headers),
# then SUMMARY_LUA.
_REQUEST = """
local f = assert(io.open(%(body)s, "rb")); local body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.body = body
%(headers)s
"""

SUMMARY_LUA = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write("WRK_SUMMARY ", string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
"""A JSON summary of the run printed at its end (WRK_SUMMARY, read by `result_of`), for any script."""


def available() -> bool:
    return shutil.which("wrk") is not None


def closed_loop(base_url: str, payload: Payload, concurrency: int, duration_s: float,
                warmup_s: float = 1.0) -> tuple[Summary, float]:
    """(summary of the measured run, CPU seconds wrk used). One wrk thread: at these rates it
    is far from busy, and a second would take CPU from the server."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as folder:
        script = write_script(payload, Path(folder))
        url = base_url + payload.path
        if warmup_s > 0:
            _run(script, url, concurrency, warmup_s)
        before = cpu_seconds(resource.RUSAGE_CHILDREN)
        result = _run(script, url, concurrency, duration_s)
        cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - before
    return summary_of(result, payload.items), cpu


def write_script(payload: Payload, folder: Path) -> Path:
    """wrk's Lua for the payload, and its body, written into `folder`."""
    body = folder / "body"
    body.write_bytes(payload.body)
    # JSON string literals of ASCII text are Lua string literals too
    headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in payload.headers.items())
    script = folder / "post.lua"
    script.write_text(_REQUEST % {"body": json.dumps(str(body)), "headers": headers} + SUMMARY_LUA)
    return script


def summary_of(result: dict[str, int], items_per_request: int) -> Summary:
    """The Summary of one wrk run's WRK_SUMMARY report (microseconds, error counts by kind)."""
    errors = {k: result[k] for k in ("connect", "read", "write", "timeout") if result[k]}
    if result["non_2xx"]:
        errors["non-2xx"] = result["non_2xx"]
    # wrk counts by kind, so one request can be both non-2xx and a read error (an error
    # answer, then a closed connection): successes are counted low rather than high.
    ok = max(0, result["requests"] - sum(errors.values()))
    return Summary(
        requests=result["requests"], ok=ok, errors=errors,
        duration_s=result["duration_us"] / 1e6, items_per_request=items_per_request,
        p50_ms=result["p50_us"] / 1000, p90_ms=result["p90_us"] / 1000, p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
    )


def start(script: Path, url: str, concurrency: int, seconds: float) -> subprocess.Popen[str]:
    """wrk running `script` against `url`; its report is `result_of` it."""
    # --timeout well past any deadline of the server, so slow answers count as latency
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
               "-s", str(script), url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(wrk: subprocess.Popen[str], timeout_s: float) -> dict[str, int]:
    """What a wrk run started by `start` reported (its WRK_SUMMARY line), once it ends."""
    out, err = wrk.communicate(timeout=timeout_s)
    if wrk.returncode != 0:
        raise subprocess.CalledProcessError(wrk.returncode, wrk.args, out, err)
    line = next((x for x in out.splitlines() if x.startswith("WRK_SUMMARY ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    values: dict[str, int] = json.loads(line.removeprefix("WRK_SUMMARY "))
    return values


def _run(script: Path, url: str, concurrency: int, seconds: float) -> dict[str, int]:
    return result_of(start(script, url, concurrency, seconds), seconds + 60)
