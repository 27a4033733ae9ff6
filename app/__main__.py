"""`python -m app [--flags]`: run the service with uvicorn. Flags mirror ORTSERVE_* variables;
boolean ones are `--flag` / `--no-flag`. `python -m app import` and `check` are the model
tools (app/model_tools.py)."""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import uvicorn
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError
from uvicorn.supervisors import Multiprocess

from app import __version__, custom_ops, health_probe, listeners
from app.errors import reason
from app.http.clean_exit import WorkerConfig, exit_cleanly
from app.http.connections import uvicorn_options
from app.observability import snapshots, worker_stats, worker_traces, workers
from app.observability.log import configure_logging
from app.processes import clear_control_folder, worker_count
from app.settings import SecretError, Settings
from app.tls import scheme, tls_problem
from app.tuning import HEAP_ARENAS, one_heap

PROG = "python -m app"
USAGE = (f"usage: {PROG} [--flags] | import MODEL.onnx --name NAME | check [MODEL_DIR ...] | --version  (each flag is also an "
         f"ORTSERVE_* variable; {PROG} --help lists them)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("import", "check"):  # the model tools: app/model_tools.py
        from app.model_tools import main as model_tools

        sys.exit(model_tools(argv))
    if argv == ["--version"]:
        sys.stdout.write(version() + "\n")
        return
    # gRPC core's own log: errors only. At its default it writes a line for each failed TLS
    # handshake, and any client can open connections that fail one.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    settings = parse_settings(argv)
    if settings.trim_memory and one_heap():  # before any thread allocates
        os.environ["MALLOC_ARENA_MAX"] = str(HEAP_ARENAS)  # and the workers from their start
    problem = preflight(settings)
    if problem:
        _usage_error(problem)
    configure_logging(settings.log_format, settings.log_level, https=scheme(settings) == "https")
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_config": None,  # configure_logging's, not uvicorn's
        "access_log": False,  # the service's own (app/observability/access.py), not uvicorn's
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        **uvicorn_options(settings),  # httptools with the limits of app/http/connections.py
    }
    # uvicorn drains on SIGTERM, then raises the signal again under the handler in place before
    # its own: exit 0, with the exit hooks run (app/http/clean_exit.py; each worker too).
    signal.signal(signal.SIGTERM, exit_cleanly)
    auto, workers = settings.workers == "auto", worker_count(settings.workers)
    settings = settings.model_copy(update={"workers": workers})
    if settings.port != 0:  # port 0: the port is the kernel's choice, known once bound
        _announce(settings, settings.port)
    if workers == 1:
        from app.main import create_app  # not before: a supervising parent has no use for the app

        if settings.metrics_port is None:
            uvicorn.run(create_app(settings), **common)
            return
        config = uvicorn.Config(create_app(settings), **common)
        # uvicorn serves one app on every socket it is given: the metrics port's answers only
        # GET /metrics (app/http/metrics_port.py)
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[config.bind_socket(), _metrics_socket(settings)])
        return
    settings = _shared_folders(settings)
    # Worker processes import app.main:app and build their Settings from the environment,
    # so hand the resolved settings (flags included, workers counted) on through it.
    for name, value in settings.model_dump().items():
        if value is not None:
            os.environ[f"ORTSERVE_{name.upper()}"] = _as_env(value)
    logging.getLogger("app").info("starting %d worker processes%s", workers,
                                  " (workers auto: one per usable CPU)" if auto else "")
    own_http_socket = listeners.PER_WORKER and settings.reuse_port
    _note_queues_of_own_sockets(settings, own_http_socket)
    if not own_http_socket:
        config = WorkerConfig("app.main:app", workers=workers, **common)
        sockets = [config.bind_socket()] + ([] if settings.metrics_port is None else [_metrics_socket(settings)])
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=sockets).run()
        return
    _run_workers(WorkerConfig("app.main:app", workers=workers, **common), settings)


def _note_queues_of_own_sockets(settings: Settings, own_http_socket: bool) -> None:
    """Where each worker listens on a socket of its own, say once whether a worker that
    exits loses the connections waiting in its socket's queue (app/listeners.py)."""
    ports = [name for name, own in (("HTTP", own_http_socket), ("gRPC", settings.grpc)) if own]
    if not ports or not listeners.PER_WORKER:  # elsewhere the kernel has no such setting
        return
    moves = listeners.queue_moves_on_exit()
    if moves:
        return
    why = ("net.ipv4.tcp_migrate_req is 0" if moves is False
           else "this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+)")
    logging.getLogger("app").info(
        "each worker listens on %s sockets of its own and %s: a worker that exits resets the "
        "connections still waiting in its socket's queue (set it to 1 and the kernel hands them to "
        "another worker; --no-reuse-port shares one HTTP socket)", " and ".join(ports), why)


def _run_workers(config: uvicorn.Config, settings: Settings) -> None:
    """uvicorn.run's workers, each listening on a socket of its own (app/listeners.py), and
    on one of its own for the metrics port, where set."""
    try:
        held = listeners.bind(config.host, config.port)
    except OSError as e:
        _usage_error(f"cannot listen on {config.host}:{config.port}: {e.strerror}")
    with held, contextlib.ExitStack() as stack:
        port = held.getsockname()[1]
        logging.getLogger("app").info("listening on %s://%s:%d (a socket per worker: the kernel spreads "
                                      "connections across them)", scheme(settings), config.host, port)
        if settings.port == 0:
            _announce(settings, port)
        sockets = [listeners.WorkerSocket(config.host, port)]
        metrics_port = settings.metrics_port
        if metrics_port is not None:  # held here too, so that no other program takes it between workers
            stack.enter_context(listeners.bind(config.host, metrics_port))
            sockets.append(listeners.WorkerSocket(config.host, metrics_port))
            _say_metrics_port(scheme(settings), config.host, metrics_port)
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=sockets).run()  # type: ignore[arg-type]  # bound in each worker


def _announce(settings: Settings, port: int) -> None:
    """Where the container's health check (app/health_probe.py) finds this server: the flags
    given to the image's command are not in the probe's environment."""
    cert, key = settings.tls_cert_file, settings.tls_key_file  # both or neither (Settings checks)
    target = health_probe.Target(health_probe.ready_url(scheme(settings), settings.host, port),
                                 str(cert.resolve()) if cert else None, str(key.resolve()) if key else None,
                                 settings.tls_client_ca_file is not None)
    if not health_probe.announce(target):
        logging.getLogger("app").debug("could not write %s: the health probe reads ORTSERVE_* instead",
                                       health_probe.record_path())


def _shared_folders(settings: Settings) -> Settings:
    """The folders the workers share: their metrics (app/observability/workers.py) and the
    repository's changes (app/repository/shared.py). A temporary one, removed at exit, for
    each not set; one that is set is cleared of an earlier run's files."""
    update: dict[str, Path] = {}
    temporary: Path | None = None
    for name in ("metrics_dir", "control_dir"):
        if getattr(settings, name) is None:
            temporary = temporary or Path(tempfile.mkdtemp(prefix="ortserve-workers-"))
            update[name] = temporary / name.removesuffix("_dir")
    if temporary is not None:
        atexit.register(shutil.rmtree, temporary, ignore_errors=True)
    if settings.metrics_dir is not None:
        # counters of an earlier run are not this one's
        snapshots.clear(settings.metrics_dir, (workers.SUFFIX, worker_stats.SUFFIX, worker_traces.SUFFIX))
    if settings.control_dir is not None:
        clear_control_folder(settings.control_dir)
    return settings.model_copy(update=update)


def version() -> str:
    """What a bug report needs to say: this server's version, and the ONNX Runtime it runs
    on with the execution providers that build has (CUDA's where onnxruntime-gpu is in)."""
    import onnxruntime

    providers = ", ".join(onnxruntime.get_available_providers())
    return f"ortserve {__version__} (onnxruntime {onnxruntime.__version__}: {providers}; python {sys.version.split()[0]})"


def parse_settings(argv: list[str]) -> Settings:
    """Settings from flags and the environment; a bad value exits with a usage line that
    names the setting, not a traceback."""
    try:
        return Settings(_cli_parse_args=argv, _cli_kebab_case=True, _cli_prog_name=PROG,  # type: ignore[call-arg]
                        _cli_implicit_flags=True)
    except ValidationError as e:
        _usage_error("; ".join(_describe(error) for error in e.errors()))
    except SettingsError as e:
        _usage_error(str(e))


def _describe(error: Any) -> str:
    name = str(error["loc"][0]) if error["loc"] else "settings"
    flag, env = "--" + name.replace("_", "-"), f"ORTSERVE_{name.upper()}"
    received = f", got {error['input']!r}" if "input" in error and not isinstance(error["input"], dict) else ""
    return f"{flag} / {env}: {reason(error)}{received}"


def _metrics_socket(settings: Settings) -> socket.socket:
    """The metrics port's socket (app/http/metrics_port.py), bound here and shared by the
    workers as uvicorn shares the HTTP port's."""
    assert settings.metrics_port is not None
    try:
        sock = listeners.bind(settings.host, settings.metrics_port)
    except OSError as e:
        _usage_error(f"cannot listen on {settings.host}:{settings.metrics_port}: {e.strerror}")
    sock.set_inheritable(True)
    _say_metrics_port(scheme(settings), settings.host, settings.metrics_port)
    return sock


def _say_metrics_port(scheme: str, host: str, port: int) -> None:
    logging.getLogger("app").info("GET /metrics on %s://%s:%d as well", scheme, host, port)


def preflight(settings: Settings) -> str | None:
    """What would make the server fail after loading every model, checked before: the
    model folder, and the address (a second `make run` used to load, warm up and log
    'ready' before dying on 'address already in use')."""
    try:
        settings.admin_secret()
        settings.api_secrets()
    except SecretError as e:
        return f"{e}: refusing to start"
    problem = tls_problem(settings)
    if problem:
        return f"{problem}: refusing to start"
    for library in settings.custom_op_libraries:
        problem = custom_ops.library_problem(library)
        if problem:
            return f"{problem}: refusing to start"
    if settings.provider_preference:
        # onnxruntime in this process only where providers are named: a supervising parent
        # has no other use for it
        from app.runtime import providers_problem

        problem = providers_problem(settings.provider_preference)
        if problem:
            return f"{problem} (--providers or ORTSERVE_PROVIDERS; auto takes CUDA where it is usable): refusing to start"
    for folder in settings.model_dir:
        if not folder.resolve().is_dir():
            return (f"model directory {folder.resolve()} does not exist (relative to {Path.cwd()}): run from the "
                    "repository root, or point to the models with --model-dir DIR or ORTSERVE_MODEL_DIR")
    ports = [(settings.port, "--port or ORTSERVE_PORT")]
    if settings.grpc:
        if settings.grpc_port == settings.port != 0:
            return (f"the gRPC port is the HTTP port ({settings.port}): choose another with --grpc-port or "
                    "ORTSERVE_GRPC_PORT, or turn gRPC off with --no-grpc")
        ports.append((settings.grpc_port, "--grpc-port or ORTSERVE_GRPC_PORT (or --no-grpc)"))
    if settings.metrics_port is not None:
        if settings.metrics_port in (settings.port, settings.grpc_port if settings.grpc else None):
            return (f"the metrics port {settings.metrics_port} is the HTTP or gRPC port: choose another with "
                    "--metrics-port or ORTSERVE_METRICS_PORT")
        ports.append((settings.metrics_port, "--metrics-port or ORTSERVE_METRICS_PORT"))
    for port, flags in ports:
        try:
            with socket.create_server((settings.host, port), reuse_port=False) as probe:
                probe.close()
        except OSError as e:
            reason = "address already in use (is another server running?)" if e.errno == errno.EADDRINUSE else e.strerror
            return f"cannot listen on {settings.host}:{port}: {reason}; choose another with {flags}"
    return None


def _usage_error(message: str) -> NoReturn:
    sys.stderr.write(f"{USAGE}\n{PROG}: error: {message}\n")
    raise SystemExit(2)


def _as_env(value: object) -> str:
    """A setting as its ORTSERVE_* variable: secrets (the admin token, API keys) as they were given."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, str | Path | int | float | bool):
        return str(value)
    if isinstance(value, list):
        value = [v.get_secret_value() if isinstance(v, SecretStr) else str(v) if isinstance(v, Path) else v
                 for v in value]
    return json.dumps(value)  # lists: pydantic-settings parses complex values as JSON


if __name__ == "__main__":
    main()
