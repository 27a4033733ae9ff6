"""The one settings object of the service: command-line flags and ORTSERVE_* environment variables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.manifest import VersionPolicy
from app.preprocess import MAX_TEXT_CHARS, ImageLimits


class SecretError(ValueError):
    """An API key or admin token that is empty, padded, or cannot be read."""


def _checked_secret(value: str, what: str) -> str:
    """An empty key would let a request with an empty bearer token in; one with spaces around
    it could never match (tokens are read stripped)."""
    if not value.strip():
        raise SecretError(f"{what} is empty or only whitespace")
    if value != value.strip():
        raise SecretError(f"{what} has whitespace around it")
    return value


def _read_secret_file(path: Path, what: str) -> list[str]:
    """The non-blank lines of a secret file, stripped; a file with none is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SecretError(f"{what} {path} cannot be read: {e.strerror or e}") from e
    values = [line.strip() for line in text.splitlines() if line.strip()]
    if not values:
        raise SecretError(f"{what} {path} holds no secret (only blank lines)")
    return values


def _listed(value: object) -> object:
    """A list setting's value as a flag or a variable gives it: a JSON list, or comma-separated
    names (the CLI hands a single value over as a one-item list); anything else as it is."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [name.strip() for name in text.split(",") if name.strip()]
    return value


_ORIGIN = re.compile(r"(?P<scheme>https?)://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(?P<port>:[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
"""An origin as browsers write it (RFC 6454): scheme, host (a name or [IPv6]), a port only if not the default."""


SECTIONS: dict[str, tuple[str, ...]] = {
    "The server": ("host", "port", "grpc", "grpc_port", "metrics_port", "workers", "reuse_port", "metrics_dir", "control_dir", "log_format", "log_level", "access_log", "access_log_sample",),
    "Traces and the console": ("tracing", "trace_sample", "otlp_endpoint", "console",),
    "Models and their lifecycle (Triton's names)": ("model_dir", "model_control_mode", "load_model",
                                                    "repository_poll_s", "version_policy", "strict_models", "strict_readiness",
                                                    "warmup", "response_cache_bytes",),
    "Access": ("admin_token", "admin_token_file", "api_keys", "api_keys_file", "cors_origins", "shared_memory",
               "shared_memory_dir",),
    "TLS": ("tls_cert_file", "tls_key_file", "tls_client_ca_file",),
    "ONNX Runtime": ("providers", "variant", "custom_op_libraries", "intra_op_threads", "wide_batch_rows",
                     "keep_awake_ms",),
    "Batching (per model)": ("max_batch_size", "max_large_batch_size", "max_queue_delay_ms", "idle_dispatch",
                             "inline_rows", "max_inflight_batches", "inference_threads", "inference_niceness",
                             "max_queue_size", "max_queue_bytes", "retry_after_s",),
    "Deadlines, health and shutdown": ("request_timeout_s", "inference_timeout_s", "failure_threshold",
                                       "failure_cooldown_s", "drain_delay_s", "shutdown_grace_s",),
    "What one request may cost": ("max_body_bytes", "body_timeout_s", "max_large_bodies_bytes",
                                  "max_response_bytes", "trim_memory", "max_text_chars", "max_image_pixels",
                                  "image_formats", "decode_threads",),
    "Connections": ("max_connections", "max_grpc_connections", "max_header_bytes", "max_header_count", "send_timeout_s", "header_timeout_s",
                    "keep_alive_s", "max_grpc_calls", "max_grpc_calls_per_connection", "grpc_keepalive_s",
                    "grpc_client_ping_s",),
}
"""Every setting under its heading, in the order of the class: the README's table and
`--help` group them so (tests/app/test_cli.py checks each is listed once, in order)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORTSERVE_", extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    # --- The server ---
    host: str = "127.0.0.1"
    """Address to bind. The default serves this machine only; use 0.0.0.0 inside a container."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on."""
    grpc: bool = True
    """Serve the KServe V2 protocol over gRPC as well (inference.GRPCInferenceService, with
    the standard health service and server reflection) on grpc_port."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """TCP port of the gRPC service (Triton's default), on the same host address."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """A port of its own for GET /metrics as well (Triton's --metrics-port, 8002 there), for
    scrape configurations written for Triton; nothing else is answered on it. It speaks what
    the HTTP port speaks (HTTPS where tls_cert_file is set). Unset: /metrics on the HTTP port only."""
    workers: int | Literal["auto"] = "auto"
    """Worker processes, each with its own event loop and a session per model (memory: models
    x workers). auto: one per CPU this process may use (the container's CPU quota and the
    affinity mask, not the host's cores); 1: one process. Every worker serves one repository
    (control_dir); /metrics, the statistics calls and the console answer for all of them
    (metrics_dir)."""
    reuse_port: bool = True
    """With workers above 1, on Linux: each worker listens on the HTTP port with a socket of
    its own (SO_REUSEPORT), and the kernel spreads new connections evenly across them. Off:
    they share one socket, and whichever worker wakes first takes the connections waiting,
    often all of a burst. A worker that exits resets the connections still waiting in its own
    socket's queue unless the kernel's net.ipv4.tcp_migrate_req is 1 (Linux 5.14+), which
    hands them to another worker; a shared socket keeps them for the others. The gRPC port
    always has a socket per worker."""
    metrics_dir: Path | None = None
    """Where each worker writes its metrics and its Triton statistics for the others to add
    up, so that /metrics and the statistics calls answer for every worker, whichever
    answers; with workers above 1, a temporary folder unless set."""
    control_dir: Path | None = None
    """Where the workers share the repository API's changes and their readiness (so that a
    load or unload reaches every worker), the log's settings and the shared-memory regions, and
    where each listens for the others' steps of the sequences it holds (a Unix socket: keep the
    path short); with workers above 1, a temporary folder unless set."""
    log_format: Literal["text", "json"] = "text"
    """text for people, json for log collectors."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe log records written; changed while serving through Triton's logging
    extension (POST /v2/logging, with the admin token)."""
    access_log: bool = False
    """One structured line per request (JSON with log_format json): method, route, status,
    model and version, bytes in and out, total/queue/compute ms, the batch it rode in (id,
    rows, why it ran), request and trace ids, client address (and its certificate's subject
    under mutual TLS); gRPC inference calls too.
    Formatted in bulk every 50 ms, written by a thread of its own; on in the container image."""
    access_log_sample: float = Field(default=1.0, gt=0, le=1)
    """With access_log: the fraction of successful requests logged, for very high rates
    (every 4xx and 5xx is logged)."""

    # --- Traces and the console ---
    tracing: bool = False
    """Request traces (HTTP and gRPC): body read, decode, queue wait, compute (the batch's,
    shared and linked) and encode; a caller's W3C traceparent is continued; the trace id is
    answered in x-trace-id. Kept in memory for the console's slow requests; sent as
    OpenTelemetry spans where an OTLP endpoint is set (which also turns tracing on)."""
    trace_sample: float = Field(default=1.0, ge=0, le=1)
    """The fraction of requests traced, drawn per request (a caller's traceparent flag decides
    for its request instead); OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, where set,
    decide instead. Below 1 for high rates: docs/benchmarks.md has what tracing costs."""
    otlp_endpoint: str | None = None
    """Where spans are sent over OTLP/HTTP (the `otlp` extra); OTEL_EXPORTER_OTLP_ENDPOINT
    where unset. None and no variable: traces stay in memory, and no span is made."""
    console: bool = True
    """GET /console: a page to try the served models and watch the server live (behind the
    API keys where some are set)."""

    # --- Models and their lifecycle (Triton's names) ---
    model_dir: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path("models")], min_length=1)
    """Model repository: the folder holding a folder per model (NAME/VERSION/, with a
    manifest.json or a drop-in model). Several, as Triton's repeated --model-repository:
    repeat the flag, or a JSON list or comma-separated paths; their models are served
    together, and a name found in more than one is served from none (until one is removed)."""
    model_control_mode: Literal["none", "explicit", "poll"] = "none"
    """none: load every model at start, no load/unload API. explicit: load the --load-model
    models at start, then only through the repository API. poll: load every model at start
    and rescan the model folder every repository_poll_s seconds."""
    load_model: list[str] = Field(default_factory=list)
    """With model_control_mode=explicit: models to load at start (repeat the flag; * for all)."""
    repository_poll_s: float = Field(default=5.0, gt=0)
    """With model_control_mode=poll: seconds between scans of the model folder."""
    version_policy: str = "latest:1"
    """Versions served per model, unless its newest manifest says: latest, latest:N, all,
    or specific:V1,V2."""
    strict_models: bool = False
    """Refuse to start when any model fails to load (by default the others serve and the
    failed one is UNAVAILABLE with its reason)."""
    strict_readiness: bool = True
    """Triton's --strict-readiness: /v2/health/ready, gRPC's ServerReady and its health service
    say ready only while every model that should be served is serving and healthy. Off: ready
    once the models have been loaded at start, whatever became of each (each model's own
    readiness still says), so that one broken model does not take a whole replica out of its
    load balancer; a draining server is never ready."""
    warmup: bool = True
    """Run each model once per batch-size bucket before reporting ready."""
    response_cache_bytes: int = Field(default=0, ge=0)
    """Triton's response cache: each worker keeps up to this many bytes of answers for the
    models whose configuration enables it (config.pbtxt `response_cache { enable: true }`,
    config.json or a manifest's `"response_cache": true`), and answers a repeated input from
    it without running the model; 0: no cache."""

    # --- Access ---
    admin_token: SecretStr | None = None
    """Bearer token for the repository API (index, load, unload); the API is off without one."""
    admin_token_file: Path | None = None
    """A file holding the admin token (container secrets); read at start."""
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Bearer tokens accepted by the inference endpoints; empty: no key needed."""
    api_keys_file: Path | None = None
    """A file of API keys, one per line; read at start."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Web pages of these origins may call the API from a browser (CORS): each
    `scheme://host[:port]`, comma-separated, or `*` for any; empty: none but the server's own."""
    shared_memory: bool = False
    """Serve Triton's system shared memory extension (Triton's --allow-client-shm): clients on
    this host register regions of POSIX shared memory (/dev/shm) and name them for a request's
    tensors instead of sending them. Whoever may infer may then read and write any shared-memory
    object this server's user can open: for clients trusted as that user."""
    shared_memory_dir: Path = Path("/dev/shm")
    """Where the clients' shared-memory objects are (a key `/name` is this folder's `name`):
    /dev/shm, where shm_open makes them; another folder where the clients' /dev/shm is
    mounted elsewhere in the server's file system (a sidecar's, a chroot's)."""

    # --- TLS ---
    tls_cert_file: Path | None = None
    """A PEM certificate (its chain after it) to serve HTTPS and gRPC over TLS, with
    tls_key_file; without it both ports speak plain text (TLS ended in front of the server)."""
    tls_key_file: Path | None = None
    """The certificate's private key (PEM)."""
    tls_client_ca_file: Path | None = None
    """Mutual TLS: only clients whose certificate this CA (PEM) signed are served, on both ports."""

    # --- ONNX Runtime ---
    providers: Annotated[list[str] | Literal["auto"], NoDecode] = "auto"
    """ONNX Runtime execution providers in order of preference, as a JSON list or
    comma-separated (CUDAExecutionProvider,CPUExecutionProvider). auto: CUDA then CPU
    when onnxruntime-gpu sees a GPU, otherwise CPU."""
    variant: Literal["auto", "fp32", "int8", "fp16"] = "auto"
    """Which file of each model to load. auto: the manifest's preferred_variant for the
    device (chosen by measured speed when the model was built), else fp16 on CUDA and
    int8 on CPU."""
    custom_op_libraries: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Shared libraries of ONNX Runtime custom operators, as a JSON list or comma-separated
    paths, registered with every model's sessions: for graphs with operators outside ONNX's
    domains (onnxruntime-extensions' library, at onnxruntime_extensions.get_library_path(),
    or one of your own). Their code runs in the server, so only these are loaded: a model's
    config.pbtxt may name one of them (Triton's model_operations), never another."""
    intra_op_threads: int = Field(default=0, ge=0)
    """ORT threads per inference; 0 sizes it from the CPUs this process may use (the
    container's CPU quota, not the host's cores): all but one per worker process, kept for
    its event loop, shared among every worker's inference threads."""
    wide_batch_rows: int | None = Field(default=None, ge=0)
    """With intra_op_threads 0 on CPU, batches of at least this many rows, of large requests
    (max_batch_size rows or more each, on average), run on a second ONNX Runtime session
    that also has the event loop's core. Unset: measured per model at
    warm-up, the smallest batch from which that session is at least halfway to its ideal
    speedup (none without warm-up); 0: never."""
    keep_awake_ms: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
    """When a worker is down to one request in flight (as a lone HTTP request arrives, as the
    last is answered; not within 50 ms of two in flight; gRPC calls count as in flight but
    never start it), a helper process at idle CPU priority keeps a CPU busy this long, so
    that the client's read of the answer and the next request do not wait for an idle CPU
    to wake (on a VM that wake costs tens to hundreds of µs each time). It uses only CPU
    time nothing else wants, but that time shows as CPU use. auto: 2 ms, except under a CPU
    quota (a container's --cpus), whose time it would draw from; 0: off."""

    # --- Batching (per model) ---
    max_batch_size: int | None = Field(default=None, ge=1)
    """Overrides every model's max_batch_size; 1 turns batching off."""
    max_large_batch_size: int = Field(default=128, ge=1)
    """Requests of at least a model's max_batch_size rows are batched with each other, not
    with smaller ones, up to this many rows: they leave the event loop little work per row,
    so their batches can be large (and wide). At most max_batch_size, or with batching off
    (max_batch_size 1): split like any other."""
    max_queue_delay_ms: float | None = Field(default=None, ge=0)
    """Overrides every model's wait for more requests after the first one queued."""
    idle_dispatch: bool = True
    """When a model has nothing running, run what is queued at once; false: always wait up
    to max_queue_delay_ms (or a full batch) for company, as a GPU at low load may prefer."""
    inline_rows: int = Field(default=1, ge=0)
    """When a model is idle, a batch of at most this many rows runs on the event loop
    instead of an inference thread: for a small model the hand-off costs as much as the
    run. 0: always hand off."""
    max_inflight_batches: int = Field(default=2, ge=1)
    """Batches of one model handed to its inference threads at once (running or next in
    line); more wait in the queue, where they can still grow."""
    inference_threads: int = Field(default=1, ge=1)
    """Threads per model that run batches, one batch each at a time. One, with a second
    batch ready behind it, keeps that thread busy without idle gaps; on a few cores a
    second thread competes with the event loop for CPU and the GIL (docs/benchmarks.md)."""
    inference_niceness: int = Field(default=5, ge=0, le=19)
    """Inference threads run this many nice steps below the event loop (Linux), so that on
    oversubscribed cores the loop that parses requests and feeds the batches keeps its
    CPU; 0 runs them at the same priority."""
    max_queue_size: int = Field(default=4096, ge=1)
    """Items (not requests) waiting per model, in each worker, before new requests get 503."""
    max_queue_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Bytes of model input queued per model, in each worker, before new requests get 503
    (beside max_queue_size): with N workers, the queues may hold N times this. A stateful
    model's kept states are bounded by the same (app/sequences.py)."""
    retry_after_s: int = Field(default=1, ge=0)
    """Retry-After sent with 503 when a queue is full."""

    # --- Deadlines, health and shutdown ---
    request_timeout_s: float = Field(default=10.0, gt=0)
    """Deadline from arrival to answer; past it the request gets 504."""
    inference_timeout_s: float = Field(default=30.0, gt=0)
    """A batch running longer marks its model not ready until a batch completes again."""
    failure_threshold: int = Field(default=5, ge=1)
    """Failed batches in a row after which a model answers 503 at once for failure_cooldown_s."""
    failure_cooldown_s: float = Field(default=10.0, ge=0)
    """How long a model whose batches keep failing is given a rest before it is tried again."""
    drain_delay_s: float = Field(default=0.0, ge=0)
    """On SIGTERM, how long readiness answers 503 while requests are still accepted, so a
    load balancer stops sending new ones before the listener closes; 0 closes it at once."""
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish."""

    # --- What one request may cost ---
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Larger request bodies get 413."""
    body_timeout_s: float = Field(default=30.0, gt=0)
    """A request body not received in full this long after the request arrived gets 408
    and its connection is closed (slow or stalled clients); a gRPC unary call's message,
    DEADLINE_EXCEEDED."""
    max_large_bodies_bytes: int | None = Field(default=None, gt=0)
    """Bytes of large request bodies (over 256 KiB each) being read or served at once, in each
    worker; a request that would pass it gets 503 with Retry-After. Unset: 4 x max_body_bytes."""
    max_response_bytes: int | None = Field(default=None, gt=0)
    """Requests whose answer could be larger (their rows times the outputs they ask for, as
    JSON or binary) get 413 before they are computed. Unset: 4 x max_body_bytes."""
    trim_memory: bool = True
    """Once no large body is held, and a second after a version is unloaded, return the heap's
    free pages to the system (glibc's malloc_trim), so the resident size comes back after a
    burst of large requests and does not grow as versions are replaced; for that,
    every thread's allocations are kept in one heap (glibc's MALLOC_ARENA_MAX=1, unless the
    environment sets it)."""
    max_text_chars: int = Field(default=MAX_TEXT_CHARS, ge=1)
    """Characters of a text kept before normalisation and tokenisation; the rest is cut
    (a model reads at most its max_length tokens anyway)."""
    max_image_pixels: int = Field(default=ImageLimits.max_pixels, ge=1)
    """Images claiming more pixels (width x height) are refused before they are decoded."""
    image_formats: list[str] = Field(default_factory=lambda: list(ImageLimits.formats))
    """Image formats accepted in base64 instances (Pillow's format names)."""
    decode_threads: int = Field(default=2, ge=1)
    """Threads that decode images and large bodies, off the event loop: at most this many
    requests decode at once, the others wait their turn."""

    # --- Connections ---
    max_connections: int | None = Field(default=None, ge=1)
    """Open HTTP connections per worker. At the limit, a new connection closes the longest idle
    one (no request running on it); only when every one runs a request does it get 503. Unset:
    the process's open-file limit less 128 (model files, logs, metrics) and less
    max_grpc_connections."""
    max_grpc_connections: int | None = Field(default=None, ge=1)
    """Open gRPC connections per worker; beyond, a new one is closed as it arrives (a gRPC
    client keeps one connection for many calls). Unset: a quarter of the open-file limit less
    128. Its own bound, so that gRPC connections cannot use up the descriptors HTTP needs."""
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """A request's line and headers together; larger heads get 431 and the connection closes."""
    max_header_count: int = Field(default=100, ge=1)
    """Headers per request; more get 431 and the connection closes."""
    send_timeout_s: float = Field(default=60.0, gt=0)
    """An HTTP answer its client takes none of for this long (the server's write buffer full
    and not shrinking) closes the connection, as nginx's send_timeout. A gRPC call whose answer
    its client has not taken this long after it was made counts as waiting (see
    max_grpc_calls)."""
    header_timeout_s: float = Field(default=5.0, gt=0)
    """From a request's first byte, its line and headers must arrive within this, else 408
    and the connection closes (slowloris); a gRPC connection's HTTP/2 handshake likewise."""
    keep_alive_s: float = Field(default=5.0, gt=0)
    """A connection with no request running, new or between requests, is closed after this
    long without a byte."""
    max_grpc_calls: int = Field(default=4096, ge=1)
    """gRPC calls open at once per worker. At the limit a new call closes the one that has waited
    longest with nothing to do (an idle stream, a unary call whose message has not come, a call
    whose answer its client has not taken within send_timeout_s: UNAVAILABLE); only when every
    call is working is it refused, RESOURCE_EXHAUSTED. Also
    the requests of one stream read and not yet answered on the wire; beyond, or while the
    stream's unwritten answers pass max_response_bytes, it is read as its client takes answers."""
    max_grpc_calls_per_connection: int = Field(default=128, ge=1)
    """gRPC calls open at once on one connection (HTTP/2's MAX_CONCURRENT_STREAMS, as nginx's
    128); a client's further calls wait on its side for one to end. What bounds the answers a
    client that takes none can leave in gRPC's hands: such a call may be closed to make room
    (max_grpc_calls), but its answer stays with gRPC until the client reads it or its
    connection ends (grpc's Python API cannot end one call). Behind an HTTP/2 proxy keep it at
    or above the proxy's own (HAProxy's 100): a proxy opens streams before this reaches it."""
    grpc_keepalive_s: float = Field(default=120, ge=0)
    """After this many seconds with nothing from a gRPC connection, the server pings it and
    closes it if no answer comes within 20 s (or this many, if fewer): a client that vanished
    without closing (its host gone, a NAT that dropped the mapping) stops holding its calls and
    streams. 0: no pings but gRPC's own, two hours apart."""
    grpc_client_ping_s: float = Field(default=10, gt=0)
    """The shortest interval at which a gRPC client may ping (its keepalive) while the server
    sends it nothing, with calls open or none; one that pings more often is sent GOAWAY
    (too_many_pings) at the third such ping, which ends its streams. gRPC's and Triton's own is
    300: clients that keep connections alive through NATs and load balancers ping more often."""

    @field_validator("providers", mode="before")
    @classmethod
    def _providers_listed(cls, value: object) -> object:
        """'auto', a JSON list or comma-separated names, from a flag or the environment alike."""
        listed = _listed(value)
        return "auto" if listed in ("auto", [], ["auto"]) else listed

    @property
    def provider_preference(self) -> list[str] | None:
        """The providers asked for; None: choose by what onnxruntime offers."""
        return None if self.providers == "auto" else list(self.providers)

    @field_validator("model_dir", mode="before")
    @classmethod
    def _one_or_more_folders(cls, value: object) -> object:
        """One folder (a path, as callers in code give it) or several, from a flag or the environment."""
        return [value] if isinstance(value, Path) else _listed(value)

    @field_validator("model_dir")
    @classmethod
    def _folders_once(cls, value: list[Path]) -> list[Path]:
        """A folder named twice would put each of its models in two repositories: none served."""
        seen: dict[Path, Path] = {}
        for path in value:
            same = seen.setdefault(path.resolve(), path)
            if same is not path:
                raise ValueError(f"{str(path)!r} is named twice" + (f" (as {str(same)!r})" if same != path else ""))
        return value

    @field_validator("custom_op_libraries", "cors_origins", mode="before")
    @classmethod
    def _as_lists(cls, value: object) -> object:
        """A JSON list or comma-separated values, from a flag or the environment alike."""
        return _listed(value)

    @field_validator("custom_op_libraries")
    @classmethod
    def _libraries_are_files(cls, value: list[Path]) -> list[Path]:
        """Whole paths: the workers and every session read them from wherever they run."""
        for path in value:
            if not path.is_file():
                raise ValueError(f"{path} is not a file")
        return [path.resolve() for path in value]

    @field_validator("cors_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, value: list[str]) -> list[str]:
        """A browser's Origin header is matched as it is sent: lowercase, no path, no default
        port written out; an origin that can never match is refused, not served silently."""
        if "*" in value and len(value) > 1:
            raise ValueError("'*' (any origin) is given alone")
        for origin in value:
            if origin == "*":
                continue
            match = _ORIGIN.fullmatch(origin)
            if match is None or match["port"] == _DEFAULT_PORTS[match["scheme"]]:
                raise ValueError(f"{origin!r} is not an origin as a browser sends it: scheme://host[:port], "
                                 "lowercase, without a path or a trailing '/', the port only where it is not "
                                 "the scheme's default (e.g. https://app.example.com)")
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_not_empty(cls, value: list[SecretStr]) -> list[SecretStr]:
        for number, key in enumerate(value, 1):
            _checked_secret(key.get_secret_value(), f"API key {number} of {len(value)}")
        return value

    @field_validator("admin_token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _checked_secret(value.get_secret_value(), "the admin token")
        return value

    @model_validator(mode="after")
    def _one_large_body_fits(self) -> Settings:
        if self.max_large_bodies_bytes is not None and self.max_large_bodies_bytes < self.max_body_bytes:
            raise ValueError(f"max_large_bodies_bytes ({self.max_large_bodies_bytes}) must be at least "
                             f"max_body_bytes ({self.max_body_bytes}): else no body that large is ever read")
        return self

    @model_validator(mode="after")
    def _tls_whole(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both, or neither for plain text")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file asks clients for certificates over TLS: give tls_cert_file and "
                             "tls_key_file too")
        return self

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_counted(cls, value: object) -> object:
        """One message for a bad value, not one per member of the union."""
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        if isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
            return int(value)
        raise ValueError("must be auto or a number of processes, 1 or more")

    @field_validator("version_policy")
    @classmethod
    def _policy_parses(cls, value: str) -> str:
        VersionPolicy.parse(value)
        return value

    @property
    def worker_processes(self) -> int:
        """How many worker processes this server has: `python -m app` resolves auto before it
        starts them (app/__main__.py); a process that reads auto itself (a bare `uvicorn
        app.main:app`, an app built in-process) is the only one."""
        return 1 if self.workers == "auto" else self.workers

    @property
    def large_bodies_limit_bytes(self) -> int:
        return self.max_large_bodies_bytes or 4 * self.max_body_bytes

    @property
    def response_limit_bytes(self) -> int:
        return self.max_response_bytes or 4 * self.max_body_bytes

    def admin_secret(self) -> str | None:
        """The admin token, from the setting or its file; None: the repository API is off.
        SecretError for a file that cannot be read or holds no token."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        if self.admin_token_file is not None:
            tokens = _read_secret_file(self.admin_token_file, "the admin token file")
            if len(tokens) > 1:
                raise SecretError(f"the admin token file {self.admin_token_file} holds {len(tokens)} lines; "
                                  "it takes one token")
            return tokens[0]
        return None

    def api_secrets(self) -> list[str]:
        """Every API key, from the setting and its file (one per line, blank lines skipped);
        SecretError for a file that cannot be read or holds no key."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            keys += _read_secret_file(self.api_keys_file, "the API key file")
        return keys


def documented_default(name: str) -> str:
    """A setting's default as the README's table writes it: a value the setting accepts
    (JSON for lists), or "(unset)" where leaving it out means something else (described)."""
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "(unset)"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list) and default and all(isinstance(item, Path) for item in default):
        return ",".join(map(str, default))  # as it is written for one folder
    if isinstance(default, list):
        return json.dumps(default, separators=(",", ":"))
    return str(default)


def markdown_table() -> str:
    """The README's configuration table, made from the fields and their docstrings (the
    same text `python -m app --help` prints), so that the two cannot disagree."""
    lines = ["| setting | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    heading = {names[0]: title for title, names in SECTIONS.items()}
    for name, field in Settings.model_fields.items():
        if name in heading:
            lines.append(f"| **{heading[name]}** | | | | |")
        flag = f"--{name.replace('_', '-')}"
        if field.annotation is bool:
            flag += f" / --no-{name.replace('_', '-')}"
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| {name} | `{flag}` | ORTSERVE_{name.upper()} | `{documented_default(name)}` | {meaning} |")
    return "\n".join(lines)
