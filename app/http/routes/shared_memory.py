"""Triton's system shared-memory extension over HTTP (app/protocol/shared_memory.py): a
region's register, status and unregister, as tritonclient's `*_system_shared_memory` calls
and perf_analyzer's `--shared-memory system` make them. 403 while the server does not allow
it (`--shared-memory`); with API keys, a key as inference takes one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from app.errors import InvalidInput
from app.http.responses import JSONResponse
from app.http.routes.common import authorize, errors
from app.http.services import services
from app.protocol.shared_memory import SharedMemoryRegions, served
from app.protocol.values import json_object

router = APIRouter(tags=["shared memory"])
RegionName = Annotated[str, Path(description="The name the region was registered under", examples=["input0"])]
_ERRORS = errors(400, 401) | {403: {"description": "The server does not allow shared memory (--shared-memory)."}}
_REGION = {"key": "/ortserve_input0", "offset": 0, "byte_size": 3136}


def _regions(request: Request) -> SharedMemoryRegions:
    found = services(request)
    authorize(request, found)
    return served(found.shared_memory)


# Registered first: the OpenAPI document lists it first, and its examples' calls then find the region.
@router.post("/v2/systemsharedmemory/region/{name}/register", summary="Register a shared memory region",
             description="`key` names a POSIX shared-memory object (shm_open's name, e.g. `/input0`); the region "
                         "is `byte_size` bytes of it from `offset`. Inputs and outputs then name the region in "
                         "their parameters (`shared_memory_region`, `shared_memory_byte_size`, "
                         "`shared_memory_offset`) instead of carrying their data.",
             responses=_ERRORS | errors(408, 413, 422),
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": {"type": "object"}, "examples": {"input0": {"value": _REGION}}}}}})
async def register(request: Request, name: RegionName) -> Response:
    regions = _regions(request)
    asked = json_object(await services(request).budget.read_body(request), "with key, offset and byte_size")
    key = asked.get("key")
    if type(key) is not str:
        raise InvalidInput(f"'key' must be the shared-memory object's name (a string), got {key!r}")
    if "byte_size" not in asked:
        raise InvalidInput("'byte_size' is missing: the region's size in bytes")
    regions.register(name, key, asked.get("offset", 0), asked["byte_size"])
    return Response(status_code=200)


@router.get("/v2/systemsharedmemory/status", summary="Every registered shared memory region",
            description="Each region's name, its object's key, and its offset and size in bytes, whichever "
                        "worker it was registered through.",
            responses=_ERRORS | {200: {"content": {"application/json": {"example": [{"name": "input0"} | _REGION]}}}})
async def status(request: Request) -> Response:
    return JSONResponse(_regions(request).status())


@router.get("/v2/systemsharedmemory/region/{name}/status", summary="One registered shared memory region",
            description="The region's name, its object's key, and its offset and size in bytes; 404 if no "
                        "region has the name.",
            responses=_ERRORS | errors(404))
async def region_status(request: Request, name: RegionName) -> Response:
    return JSONResponse(_regions(request).status(name))


@router.post("/v2/systemsharedmemory/region/{name}/unregister", summary="Unregister a shared memory region",
             description="Requests naming the region are refused from then on; a name not registered is no "
                         "error (as Triton's).", responses=_ERRORS)
async def unregister(request: Request, name: RegionName) -> Response:
    _regions(request).unregister(name)
    return Response(status_code=200)


@router.post("/v2/systemsharedmemory/unregister", summary="Unregister every shared memory region",
             description="Every region registered through any worker; requests naming one are refused from "
                         "then on.", responses=_ERRORS)
async def unregister_all(request: Request) -> Response:
    _regions(request).unregister()
    return Response(status_code=200)
