"""What the repository tests send: the admin token's header, a request for each shipped
model, and the repository index by (name, version)."""

from __future__ import annotations

import httpx

from tests.app.conftest import sample_images

TOKEN = "s3cret-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = {"instances": [sample_images(1)[0].tolist()]}
TEXT = {"instances": ["a fine film"]}


async def index(client: httpx.AsyncClient) -> dict[tuple[str, str], dict[str, str]]:
    response = await client.post("/v2/repository/index", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {(e["name"], e["version"]): e for e in response.json()}
