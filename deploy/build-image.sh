#!/usr/bin/env bash
# Build the controller's image from a clean context: the source it needs, requirements.txt (from
# pyproject.toml) and the dependencies as wheels made here with the host's pip (its Python must be 3.11,
# as in the image). No container registry is used.
#   deploy/build-image.sh [TAG]        default TAG: parallax/controller:latest
# Environment: BASE_IMAGE (default parallax/debian-bookworm:local, made by scripts/make-debian-base.sh
# when that is the base and it is missing); PYTHON (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-parallax/controller:latest}"
base="${BASE_IMAGE:-parallax/debian-bookworm:local}"
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3

if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ "$base" = "parallax/debian-bookworm:local" ] && [ -f scripts/make-debian-base.sh ]; then
        bash scripts/make-debian-base.sh "$base"
    else
        echo "build-image: base image $base is not present locally (nothing is pulled); make it first" >&2
        exit 1
    fi
fi

context="$(mktemp -d /tmp/parallax-image.XXXXXX)"
trap 'rm -rf "$context"' EXIT
cp -r pyproject.toml controller api specs deploy/Dockerfile "$context/"
find "$context" -name __pycache__ -prune -exec rm -rf {} +
"$python" - "$context/requirements.txt" <<'PY'
import sys, tomllib
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
with open(sys.argv[1], "w") as out:
    out.write("\n".join(deps) + "\n")
PY
echo "build-image: downloading wheels for $(wc -l <"$context/requirements.txt") dependencies"
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$context/wheels" -r "$context/requirements.txt"
docker build --network host --build-arg BASE_IMAGE="$base" -t "$tag" -f "$context/Dockerfile" "$context"
echo "build-image: $tag ready (base $base)"
