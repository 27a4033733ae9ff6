"""API keys and admin tokens that cannot be empty, from every source (issue 22, item 3): an
empty key would let a request with an empty bearer token in."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import SecretError, Settings
from tests.app.conftest import serving
from tests.app.test_cli import run_app
from tests.conftest import MODELS


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("ORTSERVE_API_KEYS", '[""]', "API key 1 of 1 is empty or only whitespace"),
    ("ORTSERVE_API_KEYS", '["good-key", "   "]', "API key 2 of 2 is empty or only whitespace"),
    ("ORTSERVE_API_KEYS", '[" padded "]', "API key 1 of 1 has whitespace around it"),
    ("ORTSERVE_ADMIN_TOKEN", "", "the admin token is empty or only whitespace"),
    ("ORTSERVE_ADMIN_TOKEN", " \t", "the admin token is empty or only whitespace"),
])
def test_empty_secrets_from_variables_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                                  message: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_empty_secrets_from_lists_and_flags_are_refused() -> None:
    with pytest.raises(ValidationError, match="API key 1 of 1 is empty"):
        Settings(api_keys=[""])
    with pytest.raises(ValidationError, match="the admin token is empty"):
        Settings(admin_token="")
    assert Settings(api_keys=["a-key"]).api_secrets() == ["a-key"]


@pytest.mark.parametrize("content", ["", "\n\n", "   \n\t\n"])
def test_secret_files_without_a_secret_are_refused(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text(content)
    with pytest.raises(SecretError, match="holds no secret"):
        Settings(api_keys_file=secret).api_secrets()
    with pytest.raises(SecretError, match="holds no secret"):
        Settings(admin_token_file=secret).admin_secret()
    with pytest.raises(SecretError, match="cannot be read"):
        Settings(api_keys_file=tmp_path / "missing").api_secrets()


def test_key_files_skip_blank_lines_and_strip_the_rest(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("first\n\n  second  \n")
    assert Settings(api_keys_file=keys).api_secrets() == ["first", "second"]
    token = tmp_path / "token"
    token.write_text("one\ntwo\n")
    with pytest.raises(SecretError, match="it takes one token"):
        Settings(admin_token_file=token).admin_secret()


def test_the_cli_refuses_to_start_with_an_empty_secret(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("\n")
    from_variable = run_app("--model-dir", str(MODELS), env={"ORTSERVE_API_KEYS": '[""]'})
    from_file = run_app("--model-dir", str(MODELS), "--api-keys-file", str(empty))
    assert from_variable.returncode == 2
    assert "ORTSERVE_API_KEYS: API key 1 of 1 is empty or only whitespace" in from_variable.stderr
    assert from_file.returncode == 2
    assert f"the API key file {empty} holds no secret (only blank lines): refusing to start" in from_file.stderr


async def test_the_app_refuses_to_start_with_an_empty_key_file(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("")
    with pytest.raises(SecretError, match="holds no secret"):
        async with serving(api_keys_file=empty):
            pass
