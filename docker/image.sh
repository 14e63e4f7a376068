#!/usr/bin/env bash
# The GPU image on ghcr.io, tagged by the content of docker/Dockerfile + docker/requirements.lock
# and run by digest.
#   docker/image.sh ref           print the image's tag reference for this checkout
#   docker/image.sh ensure IMAGE  pull IMAGE, or build and push it when the registry lacks it
#   docker/image.sh pull IMAGE    pull IMAGE (a tag or a digest reference) unless present locally
# ensure and pull print only the image's digest reference (NAME@sha256:...) on stdout, for
# docker/gpu-run.sh; docker's own output goes to stderr. They read the registry token from
# GH_TOKEN; the login lives in a throwaway DOCKER_CONFIG and is removed on exit, so no later
# step (or container) can reuse it.
set -euo pipefail

registry=ghcr.io

login() {
    DOCKER_CONFIG="$(mktemp -d)"
    export DOCKER_CONFIG
    trap 'docker logout "$registry" >/dev/null 2>&1 || true; rm -rf "$DOCKER_CONFIG"' EXIT
    printf '%s' "${GH_TOKEN:?GH_TOKEN is required}" |
        docker login "$registry" --username "${GITHUB_ACTOR:-stagebench}" --password-stdin >&2
}

# The registry digest of a local image, as NAME@sha256:...; fails if it was never pushed or pulled.
digest() {
    local name="${1%@*}" found
    name="${name%:*}"
    found="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$1" |
        grep -E "^${name//./\\.}@sha256:[0-9a-f]{64}\$" | head -n 1 || true)"
    if [[ -z $found ]]; then
        echo "$0: $1 has no registry digest for $name" >&2
        exit 1
    fi
    echo "$found"
}

case "${1:-}" in
    ref)
        repo="${GITHUB_REPOSITORY:?GITHUB_REPOSITORY is required}"
        tag="$(cat docker/Dockerfile docker/requirements.lock | sha256sum | cut -c1-16)"
        echo "$registry/${repo,,}/gpu:$tag"
        ;;
    ensure)
        image="${2:?usage: $0 ensure IMAGE}"
        login
        if docker pull --quiet "$image" >&2; then
            echo "reusing $image" >&2
        else
            docker build --pull --file docker/Dockerfile --tag "$image" . >&2
            docker push "$image" >&2
        fi
        digest "$image"
        ;;
    pull)
        image="${2:?usage: $0 pull IMAGE}"
        if ! docker image inspect "$image" >/dev/null 2>&1; then
            login
            docker pull --quiet "$image" >&2
        fi
        digest "$image"
        ;;
    *)
        echo "usage: $0 ref | ensure IMAGE | pull IMAGE" >&2
        exit 2
        ;;
esac
