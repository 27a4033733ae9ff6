"""`python -m app` as a user meets it: flags, documented defaults, and the errors it stops on."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.__main__ import parse_settings
from app.settings import SECTIONS, Settings, documented_default, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def run_app(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_the_readme_table_is_the_one_the_settings_make() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- settings table:.*?-->\n(.*?)\n<!-- end of settings table -->", readme, re.S)
    assert table is not None, "README.md lost its settings table markers"
    assert table.group(1) == markdown_table(), (
        "README.md's settings table is out of date: regenerate it with "
        "python -c 'from app.settings import markdown_table; print(markdown_table())'")


def test_help_prints_each_settings_docstring() -> None:
    result = run_app("--help")
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for name, field in Settings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in flat
        first_words = " ".join((field.description or "").split()[:6])
        assert first_words in flat, name


@pytest.mark.parametrize("name", [n for n in Settings.model_fields if documented_default(n) != "(unset)"])
def test_every_documented_default_is_accepted_as_a_value(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"ORTSERVE_{name.upper()}", documented_default(name).strip("`"))
    assert getattr(Settings(), name) == Settings.model_fields[name].get_default(call_default_factory=True)


def test_providers_take_auto_a_json_list_or_names_separated_by_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings(["--providers", "auto"]).provider_preference is None
    assert parse_settings(["--providers", "CPUExecutionProvider"]).provider_preference == ["CPUExecutionProvider"]
    monkeypatch.setenv("ORTSERVE_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    assert Settings().provider_preference == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("ORTSERVE_PROVIDERS", '["CPUExecutionProvider"]')
    assert Settings().provider_preference == ["CPUExecutionProvider"]


def test_boolean_flags_need_no_value_and_lists_repeat() -> None:
    assert parse_settings(["--access-log"]).access_log is True
    assert parse_settings(["--no-warmup"]).warmup is False
    assert parse_settings(["--load-model", "a", "--load-model", "b"]).load_model == ["a", "b"]


def test_a_bad_value_is_one_usage_line_naming_the_setting() -> None:
    result = run_app("--port", "notaport")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage: python -m app")
    assert "--port / ORTSERVE_PORT" in lines[1]
    assert "'notaport'" in lines[1]


def test_providers_this_onnxruntime_lacks_are_refused_before_any_model_loads() -> None:
    """As `--providers CUDAExecutionProvider` on the CPU build: a usage line, not a traceback after start."""
    result = run_app("--providers", "NoSuchExecutionProvider,CPUExecutionProvider", "--port", "0")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "are not available; this onnxruntime offers" in result.stderr
    assert "--providers or ORTSERVE_PROVIDERS" in result.stderr
    assert "LOADING" not in result.stderr


def test_a_port_in_use_is_refused_before_any_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_app("--port", str(taken.getsockname()[1]))
    assert result.returncode == 2
    assert "address already in use" in result.stderr
    assert "--port" in result.stderr
    assert "LOADING" not in result.stderr  # nothing was loaded or warmed first


def test_a_grpc_port_in_use_is_refused_too() -> None:
    """gRPC would share a taken port silently (SO_REUSEPORT); one server must not."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_app("--port", "0", "--grpc-port", port)
        same = run_app("--port", "8000", "--grpc-port", "8000")
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert "--grpc-port or ORTSERVE_GRPC_PORT (or --no-grpc)" in result.stderr
    assert same.returncode == 2
    assert "the gRPC port is the HTTP port" in same.stderr
    assert "LOADING" not in result.stderr


def test_a_missing_model_folder_says_where_it_looked_and_how_to_point_elsewhere(tmp_path: Path) -> None:
    result = run_app("--port", "0", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "models") in result.stderr
    assert "--model-dir" in result.stderr


def test_every_setting_is_in_one_section_in_the_order_of_the_class() -> None:
    listed = [name for names in SECTIONS.values() for name in names]
    assert listed == list(Settings.model_fields), "app/settings.py SECTIONS and the class's fields differ"


def test_a_model_directory_that_is_a_models_folder_is_one_line_saying_where_to_point(model_root: Path) -> None:
    result = run_app("--model-dir", str(model_root / "fashion-cnn"), "--port", "0", "--workers", "1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.count("no models found") == 1, result.stderr
    assert f"so it is a model's folder, not a model directory: point --model-dir at the folder that holds it " \
           f"({model_root})" in result.stderr


def test_strict_models_refuses_in_one_line_without_a_traceback(model_root: Path) -> None:
    served = model_root / "fashion-cnn" / max((p.name for p in (model_root / "fashion-cnn").iterdir()), key=int)
    (served / "manifest.json").write_text("{")
    result = run_app("--strict-models", "--model-dir", str(model_root), "--port", "0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.count("refusing to start") == 1, result.stderr
    assert "--strict-models: refusing to start: model 'fashion-cnn'" in result.stderr


def test_version_says_the_servers_and_onnx_runtimes_and_starts_nothing() -> None:
    import onnxruntime

    from app import __version__

    answer = run_app("--version")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith(f"ortserve {__version__} (onnxruntime {onnxruntime.__version__}: ")
    assert "CPUExecutionProvider" in answer.stdout
    assert answer.stderr == ""  # no log line: nothing was started
