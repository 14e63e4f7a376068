#!/usr/bin/env bash
# The GPU image on ghcr.io, tagged by the content of docker/Dockerfile + docker/requirements.lock.
#   docker/image.sh ref           print the image reference for this checkout
#   docker/image.sh ensure IMAGE  pull IMAGE, or build and push it when the registry lacks it
#   docker/image.sh pull IMAGE    pull IMAGE unless it is already present locally
# ensure/pull read the registry token from GH_TOKEN; the login lives in a throwaway
# DOCKER_CONFIG and is removed on exit, so no later step (or container) can reuse it.
set -euo pipefail

registry=ghcr.io

login() {
    DOCKER_CONFIG="$(mktemp -d)"
    export DOCKER_CONFIG
    trap 'docker logout "$registry" >/dev/null 2>&1 || true; rm -rf "$DOCKER_CONFIG"' EXIT
    printf '%s' "${GH_TOKEN:?GH_TOKEN is required}" |
        docker login "$registry" --username "${GITHUB_ACTOR:-stagebench}" --password-stdin
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
        if docker pull --quiet "$image"; then
            echo "reusing $image"
        else
            docker build --pull --file docker/Dockerfile --tag "$image" .
            docker push "$image"
        fi
        ;;
    pull)
        image="${2:?usage: $0 pull IMAGE}"
        if ! docker image inspect "$image" >/dev/null 2>&1; then
            login
            docker pull --quiet "$image"
        fi
        ;;
    *)
        echo "usage: $0 ref | ensure IMAGE | pull IMAGE" >&2
        exit 2
        ;;
esac
