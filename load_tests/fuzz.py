"""schemathesis against the OpenAPI document of a real server: every operation, generated
requests, the invariants tests/app/http/test_fuzz.py asserts (never a 5xx, every 4xx JSON with a
message), and here the slowest answer per operation, printed as a table. Timings are a
figure to read, never a test's bound: CI machines are shared and noisy.

    python -m load_tests.fuzz                 # about a minute
    python -m load_tests.fuzz --examples 100

Starts `python -m app` on a free loopback port with the repository API on (explicit mode,
an admin token), so that its operations are exercised past the token check.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings

from load_tests.server import ROOT, ServerProcess

HANG_S = 60.0
"""A call that takes this long has hung: a failure, whatever the machine's load."""


def fuzzed_server(model_dir: Path, folder: Path) -> ServerProcess:
    token = folder / "token"
    token.write_text("fuzz")
    objects = folder / "shm"  # the shared-memory calls fuzzed too, with keys that find nothing real
    objects.mkdir(exist_ok=True)
    return ServerProcess(["--model-dir", str(model_dir), "--admin-token-file", str(token),
                          "--model-control-mode", "explicit", "--load-model", "*",
                          "--shared-memory", "--shared-memory-dir", str(objects)])


def operations(url: str) -> list[object]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def fuzz_operation(operation: object, examples: int, slowest: dict[str, float]) -> None:
    """Generated requests for one operation; AssertionError (shrunk by hypothesis) where an
    answer breaks an invariant. `slowest` gets the operation's slowest answer, in seconds."""

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())  # type: ignore[attr-defined]
    def check(case) -> None:  # type: ignore[no-untyped-def]
        if case.path == "/v2/repository/models/{name}/unload":
            case.path_parameters = {"name": "no-such-model"}  # fuzz the call, keep the models served
        response = case.call(timeout=HANG_S)
        where = f"{case.method} {case.formatted_path}"
        assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            content_type = response.headers.get("content-type") or [""]  # schemathesis: a list per header
            assert content_type[0].startswith("application/json"), where
            assert response.json()["error"], where
        key = f"{case.method} {case.path}"
        slowest[key] = max(slowest.get(key, 0.0), response.elapsed)

    check()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--examples", type=int, default=25, help="generated requests per operation")
    args = parser.parse_args(argv)
    slowest: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, fuzzed_server(args.model_dir.resolve(), Path(folder)) as server:
        for operation in operations(server.url):
            fuzz_operation(operation, args.examples, slowest)
    print("| operation | slowest answer (ms) |\n|---|---|")
    for key, seconds in sorted(slowest.items(), key=lambda item: -item[1]):
        print(f"| {key} | {seconds * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
