"""`inference.GRPCInferenceService`: the KServe V2 protocol over gRPC, on the same
repository, batchers, deadlines, admission bounds and metrics as the HTTP routes.

Every call is one coroutine on the event loop that also serves HTTP (grpc.aio). ModelInfer
takes the message's bytes as they arrived and goes down the one inference path
(app/inference.py) with the gRPC exchange (app/protocol/v2_grpc.py); the other calls answer
from the same views of the repository as HTTP (app/model_views.py). Errors are the HTTP
path's, under gRPC's codes (app/grpc/status.py). The service's calls that Triton has and
this server does not (CUDA shared memory) answer UNIMPLEMENTED, as grpc does for any
method no handler serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, Protocol

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb

from app import __version__, model_views
from app.access import check_admin, check_admin_token, check_api_key
from app.errors import InvalidInput, ModelNotFound, ModelNotReady, QueueFull, ServingError
from app.grpc.calls import CURRENT_CALL, explain_closing
from app.grpc.status import code_of
from app.inference import Limits, run_inference
from app.observability.access import AccessLog, RequestTiming, line, request_timing
from app.observability.log_settings import SharedLogSettings
from app.observability.metrics import RequestSeries
from app.observability.trace_settings import SharedTraceSettings
from app.observability.tracing import Observers, Tracing
from app.offload import HEAVY_BODY_BYTES, Offload
from app.protocol.shared_memory import SharedMemoryRegions, served
from app.protocol.triton import SERVER_NAME, extensions
from app.protocol.v2_grpc import GrpcExchange, parameter_values, parse_infer_request, sequence_key
from app.repository import ModelRepository, check_no_repository, load_config, unload_dependents
from app.repository.shared import RepositoryChanges
from app.repository.uploads import uploaded_files
from app.settings import Settings
from app.tls import readable_subject

logger = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
"""inference.GRPCInferenceService: KServe's and Triton's name alike."""


class LargeBodies(Protocol):
    """The bound on large bodies held at once (app/http/budget.py `LargeBodies`)."""

    def take(self, scope: MutableMapping[str, Any], size: int) -> None: ...

    def release(self, scope: MutableMapping[str, Any]) -> None: ...


class Budget(Limits, Protocol):
    @property
    def large_bodies(self) -> LargeBodies: ...


class Serving(Protocol):
    """What the calls need of the running service (read only): the HTTP routes' services
    (app/http/services.py), which app/main.py hands over."""

    @property
    def settings(self) -> Settings: ...
    @property
    def repository(self) -> ModelRepository: ...
    @property
    def budget(self) -> Budget: ...
    @property
    def offload(self) -> Offload: ...
    @property
    def api_keys(self) -> list[bytes]: ...
    @property
    def admin_token(self) -> bytes | None: ...
    @property
    def changes(self) -> RepositoryChanges: ...
    @property
    def log_settings(self) -> SharedLogSettings: ...
    @property
    def shared_memory(self) -> SharedMemoryRegions | None: ...
    @property
    def trace_settings(self) -> SharedTraceSettings | None: ...

    def ready(self) -> bool: ...

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's statistics of the model (app/model_views.py), every worker's summed."""
        ...


Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class InferenceService:
    def __init__(self, serving: Serving, series: RequestSeries, observers: Observers | None = None) -> None:
        self.serving = serving
        self.series = series  # the requests' metrics, shared with HTTP (app/observability/metrics.py)
        self.observers = observers  # the access log and the tracer, HTTP's (the app's), where on

    def ready(self) -> bool:
        """The readiness of /v2/health/ready (app/http/services.py)."""
        return self.serving.ready()

    def handler(self) -> grpc.GenericRpcHandler:
        by_name = lambda request: request.name  # noqa: E731
        calls: dict[str, tuple[Behaviour, Callable[[Any], Any], Callable[[Any], str]]] = {
            "ServerLive": (self._server_live, pb.ServerLiveRequest.FromString, lambda _: ""),
            "ServerReady": (self._server_ready, pb.ServerReadyRequest.FromString, lambda _: ""),
            "ModelReady": (self._model_ready, pb.ModelReadyRequest.FromString, by_name),
            "ServerMetadata": (self._server_metadata, pb.ServerMetadataRequest.FromString, lambda _: ""),
            "ModelMetadata": (self._model_metadata, pb.ModelMetadataRequest.FromString, by_name),
            "ModelInfer": (self._model_infer, _read_infer, _infer_model),
            "ModelConfig": (self._model_config, pb.ModelConfigRequest.FromString, by_name),
            "ModelStatistics": (self._model_statistics, pb.ModelStatisticsRequest.FromString, by_name),
            "RepositoryIndex": (self._repository_index, pb.RepositoryIndexRequest.FromString, lambda _: ""),
            "RepositoryModelLoad": (self._repository_load, pb.RepositoryModelLoadRequest.FromString,
                                    lambda request: request.model_name),
            "RepositoryModelUnload": (self._repository_unload, pb.RepositoryModelUnloadRequest.FromString,
                                      lambda request: request.model_name),
            "LogSettings": (self._log_settings, pb.LogSettingsRequest.FromString, lambda _: ""),
            "TraceSetting": (self._trace_setting, pb.TraceSettingRequest.FromString,
                             lambda request: request.model_name),
            "SystemSharedMemoryStatus": (self._shm_status, pb.SystemSharedMemoryStatusRequest.FromString,
                                         lambda _: ""),
            "SystemSharedMemoryRegister": (self._shm_register, pb.SystemSharedMemoryRegisterRequest.FromString,
                                           lambda _: ""),
            "SystemSharedMemoryUnregister": (self._shm_unregister,
                                             pb.SystemSharedMemoryUnregisterRequest.FromString, lambda _: ""),
        }
        handlers = {}
        for method, (behaviour, read, model_of) in calls.items():
            # ModelInfer's answer is serialized already (app/protocol/v2_grpc.py); the others' here.
            write = None if method == "ModelInfer" else _serialize
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                self._call(method, behaviour, model_of), request_deserializer=read, response_serializer=write)
        # Answers on the stream are serialized where they are made.
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer, request_deserializer=_read_infer, response_serializer=None)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _call(self, method: str, behaviour: Behaviour, model_of: Callable[[Any], str]) -> Behaviour:
        """One call: its behaviour, its error as a status, and its metrics (as HTTP's, with
        the endpoint `grpc.<Method>` and the code's name as the status)."""
        endpoint = f"grpc.{method}"

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code, message = grpc.StatusCode.OK, ""
            try:
                return await behaviour(request, context)
            except asyncio.CancelledError:  # the client cancelled, or its deadline passed
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as e:
                code, message = _failure(e, endpoint)
                if isinstance(e, QueueFull):
                    context.set_trailing_metadata((("retry-after", str(e.retry_after_s)),))
            finally:
                self.series.record(model_of(request), endpoint, code.name, time.perf_counter() - started)
            # grpc.aio keeps the AbortError on the call, and its traceback holds this frame: a
            # cycle only a full collection of the cyclic garbage collector frees, which may be
            # long in coming. The request (a large message's bytes) goes now (300 refused 4 MB
            # calls left a worker 1 GB larger: docs/benchmarks.md, "A refused gRPC call's message").
            del request
            await context.abort(code, message)

        return call

    # --- health and metadata ------------------------------------------------------------

    async def _server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    async def _model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        """A yes or no, as Triton answers it: false for a model not served or not known."""
        try:
            self.serving.repository.get(request.name, request.version or None)
        except (ModelNotFound, ModelNotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def _server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__,
                                         extensions=extensions(self.serving.shared_memory is not None))

    async def _model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        found = model_views.metadata(self.serving.repository, request.name, request.version or None)
        found.pop("parameters")  # the gRPC message has no field for them; HTTP's metadata has
        return json_format.ParseDict(found, pb.ModelMetadataResponse())

    async def _model_config(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        found = model_views.config(self.serving.repository, request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(found, model_config_pb2.ModelConfig()))

    async def _model_statistics(self, request: pb.ModelStatisticsRequest, context: Any
                                ) -> pb.ModelStatisticsResponse:
        found = self.serving.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[json_format.ParseDict(s, pb.ModelStatistics()) for s in found])

    # --- inference ------------------------------------------------------------------------

    async def _model_infer(self, request: tuple[bytes, pb.ModelInferRequest | InvalidInput],
                           context: grpc.aio.ServicerContext) -> bytes:
        self._check_key(context)
        return await self._infer_one(request, context, streamed=False)

    def _check_key(self, context: grpc.aio.ServicerContext) -> None:
        keys = self.serving.api_keys
        if keys:  # reading the metadata costs on every call; without keys nothing is checked
            check_api_key(_authorization(context), keys)

    async def _infer_one(self, request: tuple[bytes, pb.ModelInferRequest | InvalidInput],
                         context: grpc.aio.ServicerContext, *, streamed: bool, unanswered: int = 0) -> bytes:
        """One request through the inference path: its answer serialized (GrpcExchange).
        `unanswered`: on a stream, its messages read before this one and not yet answered."""
        observers = self.observers
        tracing = observers.tracing if observers is not None else None
        access = observers.access_log if observers is not None else None
        awake = observers.keep_awake if observers is not None else None
        metadata: dict[str, str | bytes] = {}
        traced = False
        if tracing is not None or access is not None:  # what the trace and the line read, once
            metadata = {k: v for k, v in context.invocation_metadata() or () if k in _OBSERVED_METADATA}
        if tracing is not None:  # decided first, as HTTP's: an unsampled call costs a random number
            traced = tracing.sampled(_bytes(metadata.get("traceparent")))
        if awake is not None:  # counted as HTTP's requests are, but never what spins the helper
            awake.began(spins=False)
        try:
            if traced or access is not None:
                return await self._observed(tracing if traced else None, access, request, context, metadata,
                                            streamed=streamed, unanswered=unanswered)
            return await self._infer_untraced(request, context, streamed=streamed, arrived=time.monotonic(),
                                              unanswered=unanswered)
        finally:
            if awake is not None:
                awake.ended(spins=False)

    async def _observed(self, tracing: Tracing | None, access: AccessLog | None,
                        request: tuple[bytes, pb.ModelInferRequest | InvalidInput], context: grpc.aio.ServicerContext,
                        metadata: dict[str, str | bytes], *, streamed: bool, unanswered: int) -> bytes:
        """`_infer_one` with its trace, where traced (the caller's `traceparent` metadata
        continued, the trace id answered in `x-trace-id` metadata: unary calls only, a
        stream's answers have none), and its access-log line, where the log is on."""
        arrived, started = time.monotonic(), time.perf_counter()
        timing = RequestTiming(arrived=arrived, body_done=arrived, bytes_in=len(request[0]))
        token = request_timing.set(timing)
        method = "ModelStreamInfer" if streamed else "ModelInfer"
        traced = None
        if tracing is not None:
            timing.traced, timing.arrived_ns = True, time.time_ns()
            traced = tracing.start(f"grpc {method}", _bytes(metadata.get("traceparent")),
                                   _bytes(metadata.get("tracestate")), timing)
        code = grpc.StatusCode.OK.name
        try:
            if traced is not None and not streamed:
                await context.send_initial_metadata((("x-trace-id", timing.trace_id),))
            answer = await self._infer_untraced(request, context, streamed=streamed, arrived=arrived,
                                                unanswered=unanswered)
            timing.bytes_out = len(answer)
            return answer
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception as e:
            code = _failure(e, f"grpc.{method}")[0].name
            raise
        finally:
            request_timing.reset(token)
            model = timing.model or getattr(request[1], "model_name", "")[:128] or None
            if traced is not None and tracing is not None:
                tracing.finish(traced, timing, f"grpc {method}", code, {
                    "model": model, "version": timing.version or None, "rpc.system": "grpc", "rpc.method": method})
            if access is not None:
                peer = context.peer()  # "ipv4:127.0.0.1:5555"
                client = peer.partition(":")[2].rpartition(":")[0] or peer if peer else None
                rid = _text(metadata.get("x-request-id"))
                # the route the RPC's name, the status the code's name
                access.write(line("grpc", method, code, model, timing, rid[:128] if rid else None,
                                  _bytes(metadata.get("traceparent")), client, time.perf_counter() - started,
                                  self._client_cert(context)))

    def _client_cert(self, context: grpc.aio.ServicerContext) -> str | None:
        """The subject of the certificate the client presented, under mutual TLS (gRPC core's
        `x509_subject`, written as HTTP's access lines write it: app/tls.py)."""
        if self.serving.settings.tls_client_ca_file is None:
            return None
        subject = (context.auth_context() or {}).get("x509_subject")
        return readable_subject(subject[0].decode("utf-8", "replace")) if subject else None

    async def _infer_untraced(self, request: tuple[bytes, pb.ModelInferRequest | InvalidInput],
                              context: grpc.aio.ServicerContext, *, streamed: bool, arrived: float,
                              unanswered: int = 0) -> bytes:
        body, message = request
        serving = self.serving
        if isinstance(message, InvalidInput):
            raise message
        held: dict[str, Any] = {}  # large-body bytes this call holds, given back when it ends
        if len(body) > HEAVY_BODY_BYTES:
            serving.budget.large_bodies.take(held, len(body))
        try:
            async with serving.repository.lease(message.model_name, message.model_version or None) as model:
                # Unary calls reach the model one per pass of grpc.aio's loop, each finding it
                # idle: run inline one by one, they held the loop that reads the next (without,
                # 1.10-1.20x the calls/s at c16 and c64; HTTP's requests arrive together and
                # measured 0.94-0.99 with the rule: docs/benchmarks.md, "gRPC unary calls").
                # A stream's messages likewise, one read at a time: where its client has earlier
                # ones still unanswered, they count as on the way, or a busy stream ran each
                # alone on the loop (docs/benchmarks.md, "One stream, many requests").
                exchange = GrpcExchange(context.time_remaining(), streamed, serving.shared_memory)
                return await run_inference(model, message, exchange, serving.budget,
                                           serving.offload, arrived, client_gone=context.cancelled,
                                           body_bytes=len(body), others_on_the_way=not streamed,
                                           in_flight_beside=unanswered)
        finally:
            serving.budget.large_bodies.release(held)

    async def model_stream_infer(self, requests: AsyncIterator[tuple[bytes, pb.ModelInferRequest | InvalidInput]],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Triton's streaming inference: every request on the stream runs as it arrives, beside
        the others (so they batch together), and is answered as it completes, in any order, by
        its `id`. A request that fails is answered with its error message (the stream goes on),
        as Triton answers it; the key is checked once, for the stream."""
        try:
            self._check_key(context)
        except ServingError as e:
            await context.abort(code_of(e), e.message)
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        unanswered = 0  # messages read and not yet answered on the wire: the client's concurrency here
        # A message counts as unanswered until its answer is on the wire, not only until it is made:
        # a client that writes and never reads would otherwise have every answer kept here.
        # At most max_grpc_calls of a stream's messages are read and unanswered, and no more is
        # read while its answers waiting to be written pass one largest answer's worth; beyond
        # either, the stream is not read (HTTP/2 flow control holds the client back): `room`.
        most_unanswered = self.serving.settings.max_grpc_calls
        most_waiting, waiting_bytes = self.serving.settings.response_limit_bytes, 0
        room = asyncio.Event()
        room.set()
        call = CURRENT_CALL.get()  # the guard's (app/grpc/calls.py): told when the stream is working

        # A sequence's messages on the stream, each after the one before it: they run one at a
        # time anyway (app/sequences.py), and must in the order sent, which reading them side by
        # side would not keep (a large one is decoded off the loop, and the next may pass it).
        latest_of: dict[tuple[str, Any], asyncio.Task[None]] = {}

        async def answer(request: tuple[bytes, pb.ModelInferRequest | InvalidInput], earlier: int,
                         after: asyncio.Task[None] | None) -> None:
            nonlocal waiting_bytes
            if after is not None:
                await asyncio.wait([after])
            started, code = time.perf_counter(), grpc.StatusCode.OK
            message = request[1]
            try:
                reply = await self._infer_one(request, context, streamed=True, unanswered=earlier)
            except Exception as e:
                code, text = _failure(e, "grpc.ModelStreamInfer")
                reply = _stream_error(message, text).SerializeToString()
            finally:
                self.series.record(_infer_model(request), "grpc.ModelStreamInfer", code.name,
                                   time.perf_counter() - started)
            answers.put_nowait(reply)
            waiting_bytes += len(reply)
            if waiting_bytes >= most_waiting:
                room.clear()

        async def read() -> None:
            nonlocal unanswered
            try:
                async for request in requests:
                    await room.wait()
                    key = sequence_key(request[1])
                    after = latest_of.get(key) if key is not None else None
                    task = asyncio.create_task(answer(request, unanswered, after))
                    if key is not None:
                        latest_of[key] = task
                        task.add_done_callback(partial(_forget, latest_of, key))
                    unanswered += 1
                    if unanswered >= most_unanswered:
                        room.clear()
                    if call is not None:
                        call.took()
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running)
            finally:
                answers.put_nowait(None)  # the stream's end, however reading ended

        reader = asyncio.create_task(read())
        try:
            while (reply := await answers.get()) is not None:
                if call is not None:
                    call.handing()  # not taken within send_timeout_s, the call may be closed for room
                yield reply  # resumed once grpc has taken it
                unanswered -= 1
                waiting_bytes -= len(reply)
                if unanswered < most_unanswered and waiting_bytes < most_waiting:
                    room.set()
                if call is not None:
                    call.answered()
            await reader  # a failure to read the stream is the call's
        except asyncio.CancelledError:
            await explain_closing(context)  # closed by the guard (it says why), or the client left
            raise
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    # --- the model repository -------------------------------------------------------------

    def _check_admin(self, context: grpc.aio.ServicerContext, *, changes: bool) -> None:
        serving = self.serving
        check_admin(_authorization(context), serving.admin_token, serving.settings.model_control_mode,
                    changes=changes)

    async def _repository_index(self, request: pb.RepositoryIndexRequest, context: Any
                                ) -> pb.RepositoryIndexResponse:
        self._check_admin(context, changes=False)
        check_no_repository(request.repository_name)
        entries = await self.serving.repository.index()
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=e["name"], version=e["version"], state=e["state"],
                                                  reason=e["reason"])
            for e in entries if not request.ready or e["state"] == "READY"])

    async def _repository_load(self, request: pb.RepositoryModelLoadRequest, context: Any
                               ) -> pb.RepositoryModelLoadResponse:
        self._check_admin(context, changes=True)
        check_no_repository(request.repository_name)
        parameters = parameter_values(request.parameters)
        await self.serving.changes.load(request.model_name, load_config(parameters), uploaded_files(parameters))
        return pb.RepositoryModelLoadResponse()

    async def _repository_unload(self, request: pb.RepositoryModelUnloadRequest, context: Any
                                 ) -> pb.RepositoryModelUnloadResponse:
        self._check_admin(context, changes=True)
        check_no_repository(request.repository_name)
        await self.serving.changes.unload(request.model_name, unload_dependents(parameter_values(request.parameters)))
        return pb.RepositoryModelUnloadResponse()

    # --- system shared memory ---------------------------------------------------------------

    def _regions(self, context: grpc.aio.ServicerContext) -> SharedMemoryRegions:
        """The regions (app/protocol/shared_memory.py), as HTTP's calls reach them: with a key
        where inference takes one, PERMISSION_DENIED while the server does not allow them."""
        self._check_key(context)
        return served(self.serving.shared_memory)

    async def _shm_status(self, request: pb.SystemSharedMemoryStatusRequest, context: Any
                          ) -> pb.SystemSharedMemoryStatusResponse:
        answer = pb.SystemSharedMemoryStatusResponse()
        for region in self._regions(context).status(request.name):
            answer.regions[region["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return answer

    async def _shm_register(self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
                            ) -> pb.SystemSharedMemoryRegisterResponse:
        self._regions(context).register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def _shm_unregister(self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
                              ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._regions(context).unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # --- the traces' settings --------------------------------------------------------------

    async def _trace_setting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        """Triton's trace extension (app/observability/trace_settings.py): a request that names
        no setting reads them; one that names any changes those, with the admin token. A
        model's settings are the server's (app/http/routes/trace_settings.py)."""
        kept = self.serving.trace_settings
        assert kept is not None  # set by the lifespan before any call
        settings = kept.current
        if request.model_name:
            self.serving.repository.get(request.model_name)  # NOT_FOUND / UNAVAILABLE as any model call
        if request.settings:
            check_admin_token(_authorization(context), self.serving.admin_token, "changing the trace settings")
            asked = {name: list(value.value) for name, value in request.settings.items()}
            settings = kept.change_for(asked, bool(request.model_name))
        answer = pb.TraceSettingResponse()
        for name, value in settings.as_triton().items():
            answer.settings[name].value.extend(value if isinstance(value, list) else [value])
        return answer

    # --- the log's settings ---------------------------------------------------------------

    async def _log_settings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        """Triton's logging extension (app/observability/log_settings.py): a request that
        names no setting reads them; one that names any changes those, with the admin token."""
        kept = self.serving.log_settings
        settings = kept.current
        if request.settings:
            check_admin_token(_authorization(context), self.serving.admin_token, "changing the log settings")
            asked = {}
            for name, value in request.settings.items():
                chosen = value.WhichOneof("parameter_choice")
                if chosen is None:
                    raise InvalidInput(f"log setting {name!r} has no value")
                asked[name] = getattr(value, chosen)
            settings = kept.change(asked)
        answer = pb.LogSettingsResponse()
        for name, value in settings.as_triton().items():
            field = "bool_param" if isinstance(value, bool) else "uint32_param" if isinstance(value, int) else \
                "string_param"
            setattr(answer.settings[name], field, value)
        return answer


def _read_infer(body: bytes) -> tuple[bytes, pb.ModelInferRequest | InvalidInput]:
    """ModelInfer's request as grpc hands it over: its bytes (their size decides what runs off
    the loop) and the message, or why it is not one (the call answers INVALID_ARGUMENT then;
    grpc would answer a deserializer's exception with INTERNAL)."""
    try:
        return body, parse_infer_request(body)
    except InvalidInput as e:
        return body, e


def _infer_model(request: tuple[bytes, pb.ModelInferRequest | InvalidInput]) -> str:
    message = request[1]
    return "" if isinstance(message, InvalidInput) else message.model_name


def _failure(error: Exception, endpoint: str) -> tuple[grpc.StatusCode, str]:
    """An error as the status and message a client gets, for a call or a stream's request.
    Server faults are logged; what nobody expected with its traceback, answered without internals."""
    if isinstance(error, ServingError):
        if error.status_code >= 500 and error.status_code not in (503, 504):
            logger.error("server error: %s", error.message)
        return code_of(error), error.message
    logger.error("unhandled error in %s", endpoint, exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal server error"


def _stream_error(message: pb.ModelInferRequest | InvalidInput, text: str) -> pb.ModelStreamInferResponse:
    """A failed request's answer on the stream: its message, and its id to match it by."""
    if isinstance(message, InvalidInput):
        return pb.ModelStreamInferResponse(error_message=text)
    return pb.ModelStreamInferResponse(error_message=text, infer_response=pb.ModelInferResponse(
        id=message.id, model_name=message.model_name))


_OBSERVED_METADATA = ("traceparent", "tracestate", "x-request-id")


def _text(value: str | bytes | None) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode("latin-1") if isinstance(value, str) else value


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The `authorization` metadata, as the HTTP header (`Bearer <key>`)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _forget(latest_of: dict[tuple[str, Any], asyncio.Task[None]], key: tuple[str, Any],
            done: asyncio.Task[None]) -> None:
    """A sequence's message answered: the next of it (if any) follows no one, unless it came already."""
    if latest_of.get(key) is done:
        del latest_of[key]
