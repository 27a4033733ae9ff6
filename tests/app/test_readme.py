"""Every request example in README.md, run as written against a live server, so that the
README cannot drift from what the service answers.

A shell block's `curl` commands run with bash from the repository root (samples/ holds
their files); a `# {...}` or `# [...]` line after a command is its expected answer, and
each `"key":"value"` pair in it must be in the real one. Python blocks run as scripts; a
`# (...)` comment on a print line is the output expected.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from load_tests.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE_ADDRESS = "127.0.0.1:8000"
EXAMPLE_GRPC_ADDRESS = "127.0.0.1:8001"
ADMIN_TOKEN = "change-me"  # the README's example token


@dataclass(frozen=True)
class Example:
    command: str
    expected: str


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(body)))
                language = None
        elif language is not None:
            body.append(line)
    return blocks


def shell_examples(text: str) -> list[Example]:
    examples = []
    for language, block in fenced_blocks(text):
        if language not in ("", "sh", "bash"):
            continue
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("curl ") or EXAMPLE_ADDRESS not in block:
                i += 1
                continue
            command = [re.sub(r"\s+# .*$", "", lines[i])]
            while command[-1].rstrip().endswith("\\"):
                i += 1
                command.append(re.sub(r"\s+# .*$", "", lines[i]))
            expected = lines[i + 1][2:] if i + 1 < len(lines) and re.match(r"# [\[{]", lines[i + 1]) else ""
            examples.append(Example("\n".join(command), expected))
            i += 1
    return examples


def python_examples(text: str) -> list[str]:
    return [block for language, block in fenced_blocks(text)
            if language == "python" and (EXAMPLE_ADDRESS in block or EXAMPLE_GRPC_ADDRESS in block)]


def perf_analyzer_examples(text: str) -> list[str]:
    """The README's perf_analyzer commands (the shared tool's), and the line writing their inputs."""
    return [line for language, block in fenced_blocks(text) if language == "sh" for line in block.splitlines()
            if line.startswith(("../shared/tools/perf_analyzer ", "python -m load_tests.perf_inputs "))]


EXAMPLES = shell_examples(README.read_text())


def test_the_readme_has_examples_to_check() -> None:
    assert len(EXAMPLES) >= 5
    assert python_examples(README.read_text())


MODEL_WRITER = "# writes models/"


def model_writers(text: str) -> list[str]:
    """Python blocks that write a model of their own into models/ ("Serve your own model")."""
    return [block for language, block in fenced_blocks(text) if language == "python" and block.startswith(MODEL_WRITER)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The README's examples include the repository API (explicit mode, the example token),
    tensors in shared memory, and a model of the reader's own: the shipped models are copied,
    and each model-writing block runs as written in the copy's folder, as a reader runs it in
    the repository."""
    home = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "models", home / "models")
    for script in model_writers(README.read_text()):
        result = subprocess.run([sys.executable, "-c", script], cwd=home, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    with ServerProcess(["--model-dir", str(home / "models"), "--model-control-mode", "explicit",
                        "--load-model", "*", "--shared-memory"], env={"ORTSERVE_ADMIN_TOKEN": ADMIN_TOKEN}) as running:
        yield running


def test_the_readme_shows_how_to_serve_a_model_of_ones_own() -> None:
    assert model_writers(README.read_text()), "README.md lost its 'Serve your own model' example"
    assert any("/v2/models/my-mlp/infer" in e.command for e in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.command.split("\n")[0][:70] for e in EXAMPLES])
def test_each_readme_request_gets_the_answer_it_shows(example: Example, server: ServerProcess) -> None:
    command = example.command.replace(EXAMPLE_ADDRESS, server.url.removeprefix("http://"))
    result = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "200", body
    answer = json.dumps(json.loads(body), separators=(",", ":")) if body else ""
    for pair in re.findall(r'"\w+":"[^"]*"', example.expected):
        assert pair in answer, f"README shows {pair}; the server answered {answer[:500]}"
    if example.expected.startswith("[{"):  # a list: each object shown is one of the answer's, whole
        entries = [json.dumps(e, separators=(",", ":")) for e in json.loads(body)]
        for shown in re.findall(r"\{[^{}]*\}", example.expected):
            pairs = re.findall(r'"\w+":"[^"]*"', shown)
            assert any(all(p in entry for p in pairs) for entry in entries), (
                f"README shows {shown}; no entry of the answer has all of it: {entries}")


@pytest.mark.parametrize("script", python_examples(README.read_text()))
def test_each_readme_python_example_runs(script: str, server: ServerProcess) -> None:
    pytest.importorskip("tritonclient.http", reason="the README's client example needs tritonclient[http]")
    code = script.replace(EXAMPLE_ADDRESS, server.url.removeprefix("http://")).replace(
        EXAMPLE_GRPC_ADDRESS, server.grpc_target)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shown = [m.group(1) for m in re.finditer(r"print\(.*\)\s+# (.+)$", script, re.M)]
    assert result.stdout.split("\n")[: len(shown)] == shown


def test_the_perf_analyzer_example_runs_as_written_over_both_protocols(server: ServerProcess) -> None:
    """Only the addresses change (and the measurement is shortened: its window and trials)."""
    from load_tests import perf_analyzer

    commands = perf_analyzer_examples(README.read_text())
    assert [c.split()[0] for c in commands] == ["python", "../shared/tools/perf_analyzer",
                                                "../shared/tools/perf_analyzer"]
    tool = perf_analyzer.find()
    shared = tool is not None and Path(tool).resolve() == perf_analyzer.SHARED.resolve()
    if not shared or perf_analyzer.CHROOT != Path("/var/tmp/perf-analyzer-trixie"):
        pytest.skip("the README's example is the shared perf_analyzer's (../shared/tools, as root); .ci/run sets it up")
    protocols = []
    for command in commands:
        command = command.replace(EXAMPLE_ADDRESS, f"127.0.0.1:{server.port}").replace(
            EXAMPLE_GRPC_ADDRESS, server.grpc_target).replace("python ", f"{sys.executable} ", 1)
        if "perf_analyzer" in command:
            command += " " + " ".join(perf_analyzer.QUICK_CHECK)
            protocols.append(command.split(" -i ")[1].split()[0])
        done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Unsupported type" not in done.stdout + done.stderr
    assert protocols == ["http", "grpc"]
