"""Who may call what: the API keys of the inference calls and the admin token of the
repository API, one set of rules for every transport (app/http reads the `Authorization`
header, app/grpc the `authorization` metadata; both hand its value here)."""

from __future__ import annotations

import base64
import binascii
import hmac

from app.errors import Forbidden, Unauthorized


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value; None for any other scheme."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def api_key(authorization: str | None) -> str | None:
    """The key of `Authorization: Bearer <key>`, or the password of `Basic <user:key>`: what a
    browser sends once a person has typed the key into its sign-in prompt (the console's
    pages ask with `WWW-Authenticate: Basic`), so the page's own calls carry it too."""
    if authorization is None:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return bearer_token(authorization)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def matches_any(token: str | None, secrets: list[bytes]) -> bool:
    """Constant-time comparison with every secret (no early exit on the first match)."""
    given = (token or "").encode("utf-8", "surrogateescape")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret)
    return found and token is not None


def check_api_key(authorization: str | None, keys: list[bytes]) -> None:
    """The inference calls' check; nothing to do unless keys are configured."""
    if keys and not matches_any(api_key(authorization), keys):
        raise Unauthorized("this endpoint needs an API key: send 'Authorization: Bearer <key>'")


def check_admin(authorization: str | None, token: bytes | None, control_mode: str, *, changes: bool) -> None:
    """The repository API's check: off without an admin token, Unauthorized for a wrong or
    missing token, Forbidden for load and unload where the control mode does not allow them."""
    check_admin_token(authorization, token, "the repository API")
    if changes and control_mode != "explicit":
        raise Forbidden(f"models are loaded and unloaded through the API only in the explicit model control "
                        f"mode; this server runs in {control_mode!r} mode")


def check_admin_token(authorization: str | None, token: bytes | None, what: str) -> None:
    """The admin token's check, for `what` only an admin may do (the repository API, changing
    the log's settings): Forbidden where no admin token is configured, Unauthorized for a
    wrong or missing one."""
    if token is None:
        raise Forbidden(f"{what} is off: configure an admin token (ORTSERVE_ADMIN_TOKEN or "
                        "ORTSERVE_ADMIN_TOKEN_FILE) to use it")
    if not matches_any(bearer_token(authorization), [token]):
        raise Unauthorized(f"{what} needs the admin token: send 'Authorization: Bearer <token>'")
