"""Container images for the docker backend, built locally and cached by a hash of their inputs.

Two layers, both built on the machine that runs the engine, with nothing pulled from a registry:

- the **base image** `gpufaas-base:<hash>`: a Debian rootfs from `debootstrap --variant=minbase` with
  python3 (3.11 on bookworm, the same minor version as the platform's venv), imported with `docker import`.
  The hash covers the suite, variant, package list and mirror, so a change to any of them builds a new one.
- a **function-runtime image** `gpufaas-fn-<function>:<hash>`: base + the function's bundle
  (`function.yaml`, `handler.py`, ...), entry point `python3 -m gpufaas.platform.worker` (the platform's
  one worker, mounted from the gateway's install at run time), built with the engine's legacy builder.
  The hash covers the base tag, the Dockerfile, the spec and every bundle file.

Who calls it: `DockerBackend.prepare()` (engine connection, base image) and `DockerBackend` before the
first start of a function (runtime image); `deploy/ci-prepare-docker.sh` and the tests start the engine.
A failing build raises `ImageBuildError` carrying the tail of the build log: the deploy is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from gpufaas.platform.errors import UserError

MANAGED_LABEL = "gpufaas.managed"
BASE_REPO = "gpufaas-base"
RUNTIME_REPO_PREFIX = "gpufaas-fn-"

# NOTE: the base recipe is data, hashed into the tag; bump "recipe" when the build steps change meaning.
BASE_RECIPE: dict[str, Any] = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["libgomp1", "libstdc++6", "python3"],
    "mirror": os.environ.get("GPUFAAS_DEBIAN_MIRROR", "http://deb.debian.org/debian"),
    "recipe": 1,
}

BUILD_LOG_TAIL_LINES = 15


class EngineUnavailable(UserError):
    """No Docker engine answers (raised when the backend is prepared, not at the first invocation)."""


class ImageBuildError(UserError):
    """An image build failed; the message ends with the tail of the build log."""


def cache_dir() -> Path:
    """Where debootstrap rootfs trees are kept between builds (`$GPUFAAS_CACHE_DIR` or ~/.cache/gpufaas)."""
    d = os.environ.get("GPUFAAS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gpufaas")
    return Path(d)


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


# ---------------------------------------------------------------- the engine


def connect_engine(*, start: bool = False, timeout_s: float = 60.0) -> Any:
    """A `docker.DockerClient` that answered a ping. With `start`, run `dockerd` as root when none answers.

    Raises EngineUnavailable naming the address tried and what to do.
    """
    import docker

    def ping() -> Any:
        try:
            c = docker.from_env(timeout=30)
            c.ping()
            return c
        except Exception:  # noqa: BLE001 (docker raises several unrelated types when no engine answers)
            return None

    client = ping()
    if client is None and start:
        start_engine(timeout_s=timeout_s)
        client = ping()
    if client is None:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EngineUnavailable(f"no Docker engine reachable at {where}; start one (as root: "
                                f"deploy/ci-prepare-docker.sh, or `dockerd &`) or set DOCKER_HOST")
    return client


def start_engine(*, timeout_s: float = 60.0) -> None:
    """Start `dockerd` in the background (root only) and wait until it answers; no-op if it already does.

    Who calls it: `connect_engine(start=True)` (tests). Raises EngineUnavailable with the reason.
    """
    import time

    if shutil.which("dockerd") is None:
        raise EngineUnavailable("no Docker engine running and no dockerd binary; install it "
                                "(`apt-get install -y docker.io`) or run deploy/ci-prepare-docker.sh")
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine running and dockerd needs root; start it as root or set DOCKER_HOST")
    log_path = Path(tempfile.gettempdir()) / "gpufaas-dockerd.log"
    with open(log_path, "ab") as log:
        # NOTE: start_new_session detaches dockerd from the test process group, so it outlives the run
        # that started it (the next run reuses it) and a Ctrl-C of pytest does not take it down.
        subprocess.Popen(["dockerd", "--host=unix:///var/run/docker.sock"], stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = subprocess.run(["docker", "info"], capture_output=True) if shutil.which("docker") else None
        if r is not None and r.returncode == 0:
            return
        if r is None:
            try:
                import docker

                docker.from_env(timeout=5).ping()
                return
            except Exception:  # noqa: BLE001
                pass
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace").splitlines()[-5:]
    raise EngineUnavailable(f"dockerd did not answer within {timeout_s:.0f} s; log {log_path}: {' | '.join(tail)}")


# ---------------------------------------------------------------- the base image


def base_image_tag(recipe: dict[str, Any] | None = None) -> str:
    """`gpufaas-base:<hash of the recipe>`."""
    r = recipe or BASE_RECIPE
    return f"{BASE_REPO}:{_short_hash(json.dumps(r, sort_keys=True).encode())}"


def _image_exists(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_base_image(client: Any, recipe: dict[str, Any] | None = None) -> str:
    """Return the base image tag, building it first (debootstrap + docker import) if the engine lacks it.

    The rootfs tree is kept under `cache_dir()/rootfs/<hash>` so a wiped engine re-imports in seconds.
    Raises ImageBuildError with the debootstrap log tail if the rootfs cannot be made.
    """
    r = recipe or BASE_RECIPE
    tag = base_image_tag(r)
    if _image_exists(client, tag):
        return tag
    h = tag.split(":", 1)[1]
    root = cache_dir() / "rootfs" / h
    if not (root / ".complete").exists():
        _debootstrap(r, root)
    repo, t = tag.split(":", 1)
    with tempfile.TemporaryDirectory(prefix="gpufaas-rootfs-") as tmp:
        tar_path = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tf:
            for entry in sorted(os.listdir(root)):
                if entry == ".complete":
                    continue
                tf.add(root / entry, arcname=entry)
        client.api.import_image_from_file(str(tar_path), repository=repo, tag=t)
    if not _image_exists(client, tag):
        raise ImageBuildError(f"docker import of {root} did not produce {tag}; check the engine's log")
    return tag


def _debootstrap(recipe: dict[str, Any], root: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is missing; install it (`apt-get install -y debootstrap`) "
                              "to build the base image without a registry")
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", f"--variant={recipe['variant']}", "--include=" + ",".join(recipe["include"]),
           recipe["suite"], str(tmp), recipe["mirror"]]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).strip().splitlines()[-BUILD_LOG_TAIL_LINES:]
        raise ImageBuildError(f"debootstrap {recipe['suite']} failed (exit {r.returncode}); log tail: " + " | ".join(tail))
    # NOTE: apt lists and caches are half of a minbase tree and the runtime never runs apt.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        p = tmp / junk
        if p.exists():
            for child in p.iterdir():
                if child.is_file():
                    child.unlink()
    (tmp / ".complete").write_text(json.dumps(recipe, sort_keys=True))
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)


# ---------------------------------------------------------------- function-runtime images

# NOTE: the runtime image holds no worker code: its entry point is the platform's one worker module,
# `python3 -m gpufaas.platform.worker` (platform/worker.py, the process backend's), which the docker
# backend mounts from the gateway's install (site-packages as the image python's dist-packages, whose
# .pth files python processes at start-up; see DockerBackend._create). The image is base + bundle.
BUNDLE_IN_IMAGE = "/opt/gpufaas/bundle"
DIST_PACKAGES = "/usr/local/lib/python3.11/dist-packages"  # on sys.path of bookworm's python3 (3.11)
WORKER_MODULE = "gpufaas.platform.worker"


def _bundle_files(bundle_dir: Path | None) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    if bundle_dir is None or not bundle_dir.is_dir():
        return out
    for p in sorted(bundle_dir.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            out.append((str(p.relative_to(bundle_dir)), p.read_bytes()))
    return out


def runtime_dockerfile(base_tag: str, function: str, extra_steps: str = "") -> str:
    """The Dockerfile of a function-runtime image (legacy builder; no network access needed)."""
    return (f"FROM {base_tag}\n"
            f"LABEL {MANAGED_LABEL}=1 gpufaas.function={function}\n"
            f"COPY bundle/ {BUNDLE_IN_IMAGE}/\n"
            f"{extra_steps}"
            "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1\n"
            f'ENTRYPOINT ["python3", "-m", "{WORKER_MODULE}"]\n')


def runtime_image_tag(base_tag: str, function: str, bundle_dir: Path | None, spec_yaml: str = "", extra_steps: str = "") -> str:
    """`gpufaas-fn-<function>:<hash of base tag, Dockerfile, spec and bundle files>`."""
    h = hashlib.sha256()
    for part in (base_tag, runtime_dockerfile(base_tag, function, extra_steps), spec_yaml):
        h.update(part.encode())
        h.update(b"\0")
    for name, data in _bundle_files(bundle_dir):
        h.update(name.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(data).digest())
    return f"{RUNTIME_REPO_PREFIX}{function}:{h.hexdigest()[:12]}"


def ensure_runtime_image(client: Any, base_tag: str, function: str, bundle_dir: Path | None, *,
                         spec_yaml: str = "", extra_steps: str = "") -> tuple[str, bool]:
    """Build (or find cached) the function-runtime image. Returns (tag, built_now).

    `spec_yaml` is written as bundle/function.yaml when the bundle folder has none. `extra_steps` are
    Dockerfile lines inserted before the entry point (tests use a failing RUN to check refusal).
    Raises ImageBuildError with the tail of the build log when the build fails.
    """
    tag = runtime_image_tag(base_tag, function, bundle_dir, spec_yaml, extra_steps)
    if _image_exists(client, tag):
        return tag, False
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))

        add("Dockerfile", runtime_dockerfile(base_tag, function, extra_steps).encode())
        files = _bundle_files(bundle_dir)
        names = {n for n, _ in files}
        for name, data in files:
            add(f"bundle/{name}", data)
        if "function.yaml" not in names:
            add("bundle/function.yaml", spec_yaml.encode())
    buf.seek(0)
    log: list[str] = []
    error = ""
    # NOTE: the SDK's build endpoint is the engine's legacy builder; BuildKit is not used (it does not
    # work on the test machines, and the runtime image needs nothing it adds).
    for chunk in client.api.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True,
                                  labels={MANAGED_LABEL: "1", "gpufaas.function": function}):
        if "stream" in chunk:
            log.extend(line for line in chunk["stream"].splitlines() if line.strip())
        if "error" in chunk:
            error = chunk["error"].strip()
            log.append(error)
    if error or not _image_exists(client, tag):
        tail = log[-BUILD_LOG_TAIL_LINES:]
        raise ImageBuildError(f"image build for function '{function}' failed: {error or 'no image produced'}; "
                              f"build log tail: " + " | ".join(tail))
    return tag, True
