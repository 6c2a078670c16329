#!/usr/bin/env bash
# Prepare a Docker engine for the test suite (called by .ci/run before `make test`; safe to run twice).
# Installs docker.io and debootstrap from the Debian mirror when missing, starts dockerd as root when no
# engine answers, and waits until it does. Nothing is pulled from an image registry: the tests build their
# base image from a debootstrap rootfs (platform/images.py).
# NOTE: overlay2 on cgroup v1 works on the CI machines; the legacy builder is used (DOCKER_BUILDKIT=0).
set -euo pipefail

log=${GPUFAAS_DOCKERD_LOG:-/var/log/gpufaas-dockerd.log}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "ci-prepare-docker: docker.io/debootstrap missing and not root; the Docker tests will be skipped" >&2
        exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if docker info >/dev/null 2>&1; then
    echo "ci-prepare-docker: engine already running"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "ci-prepare-docker: no engine running and not root; the Docker tests will be skipped" >&2
    exit 0
fi

nohup dockerd --host=unix:///var/run/docker.sock >"$log" 2>&1 &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "ci-prepare-docker: engine up (log: $log)"
        exit 0
    fi
    sleep 1
done
echo "ci-prepare-docker: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 20 "$log" >&2 || true
exit 1
