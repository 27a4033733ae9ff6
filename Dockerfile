# ortserve image: debian bookworm + apt's python3 + a venv; no torch.
#   CPU: docker build -t ortserve:cpu .
#   GPU: docker build --build-arg TARGET=gpu -t ortserve:gpu .   (run with the NVIDIA container toolkit)
ARG TARGET=cpu

FROM debian:bookworm-slim AS python
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM python AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && pip install --no-cache-dir --upgrade pip==25.3
WORKDIR /build
COPY pyproject.toml README.md ./
COPY app ./app

# onnxruntime-gpu and onnxruntime install the same module: for the GPU image, swap one
# for the other. Its cuda/cudnn extras bring the CUDA and cuDNN libraries as pip packages;
# the driver comes from the host through the NVIDIA container toolkit. (One stage with a
# condition rather than `FROM deps-${TARGET}`: older buildah cannot resolve stage names
# built from arguments.)
FROM build AS deps
ARG TARGET
RUN if [ "$TARGET" = gpu ]; then \
      pip install --no-cache-dir '.[gpu]' \
      && pip uninstall -y onnxruntime \
      && pip install --no-cache-dir --force-reinstall --no-deps 'onnxruntime-gpu>=1.19,<2'; \
    elif [ "$TARGET" = cpu ]; then \
      pip install --no-cache-dir .; \
    else \
      echo "TARGET must be cpu or gpu, got '$TARGET'" >&2; exit 1; \
    fi

FROM python AS runtime
RUN groupadd --gid 10001 ortserve \
 && useradd --uid 10001 --gid ortserve --home-dir /srv --shell /usr/sbin/nologin ortserve
COPY --from=deps /opt/venv /opt/venv
WORKDIR /srv
# Models are baked in; mount another models/ folder over /srv/models to serve others.
COPY --chown=ortserve:ortserve models /srv/models
ENV ORTSERVE_HOST=0.0.0.0 \
    ORTSERVE_PORT=8000 \
    ORTSERVE_GRPC_PORT=8001 \
    ORTSERVE_MODEL_DIR=/srv/models \
    ORTSERVE_ACCESS_LOG=true
USER 10001:10001
# HTTP (REST, KServe V2 / Triton) and gRPC (KServe V2 GRPCInferenceService, health, reflection).
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-m", "app.health_probe"]
# uvicorn drains in-flight requests on SIGTERM (up to ORTSERVE_SHUTDOWN_GRACE_S).
STOPSIGNAL SIGTERM
CMD ["python3", "-m", "app"]
