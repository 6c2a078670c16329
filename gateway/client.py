"""The CLI's HTTP client (one module, stdlib `urllib`): gateway address, requests, stack manifests.

Who calls it: `gpufaas deploy/ls/status/describe/rm/invoke` (gateway_cmds.py), the demo and the tests.
Errors reach users as one line: a 4xx answer raises `GatewayError` (exit 2, the gateway's message),
an unreachable gateway raises `GatewayUnreachable` (exit 3), a 5xx raises `GatewayError` with exit 1.

The gateway address is decided in `resolve_gateway()` only: `--gateway` flag, else `$GPUFAAS_GATEWAY`,
else http://127.0.0.1:8080. The API key in `resolve_api_key()` only: `--api-key`, else `$GPUFAAS_API_KEY`,
else, when the gateway is on this machine, the admin key `gpufaas up` wrote to `<data-dir>/admin.key`
(data dir `$GPUFAAS_DATA_DIR`, else `.gpufaas`, `gpufaas up`'s default).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Protocol

from pydantic import Field

from gpufaas.gateway.config import ADMIN_KEY_FILE, DEFAULT_DATA_DIR
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.specs import MAX_BUNDLE_BYTES, MAX_BUNDLE_FILE_BYTES, MAX_BUNDLE_FILES, Spec, read_yaml

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
ENV_GATEWAY = "GPUFAAS_GATEWAY"
ENV_API_KEY = "GPUFAAS_API_KEY"
ENV_DATA_DIR = "GPUFAAS_DATA_DIR"
LOCAL_HOSTS = frozenset(("127.0.0.1", "localhost", "::1", "0.0.0.0"))
STACK_VERSIONS = ("1",)
BUNDLE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".txt", ".cfg", ".toml")


def resolve_gateway(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """The gateway base URL: flag > $GPUFAAS_GATEWAY > default (the one place this is decided)."""
    source: Mapping[str, str] = os.environ if env is None else env
    url = flag or source.get(ENV_GATEWAY) or DEFAULT_GATEWAY
    if not url.startswith(("http://", "https://")):
        src = "--gateway" if flag else ENV_GATEWAY
        raise UserError(f"{src}: {url!r} is not an http(s) URL; write e.g. http://127.0.0.1:8080")
    return url.rstrip("/")


def resolve_api_key(flag: str | None, gateway_url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The API key to send: flag > $GPUFAAS_API_KEY > the local gateway's admin key file > None (the one place
    this is decided). The file is read only for a gateway on this machine: a remote one has its own."""
    source: Mapping[str, str] = os.environ if env is None else env
    key = flag or source.get(ENV_API_KEY)
    if key:
        return key.strip()
    if urllib.parse.urlsplit(gateway_url).hostname in LOCAL_HOSTS:
        path = Path(source.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR) / ADMIN_KEY_FILE
        try:
            return path.read_text().strip() or None
        except OSError:
            return None
    return None


class GatewayError(UserError):
    """The gateway answered with an error: `status`, `code`, and its one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"gateway: {message} ({status} {code})")
        self.status = status
        self.code = code
        self.exit_code = 2 if status < 500 else 1


class GatewayUnreachable(UserError):
    """No gateway answered at the address."""

    exit_code = 3


class Client:
    """A thin synchronous client of the gateway's HTTP API."""

    def __init__(self, base_url: str, timeout_s: float = 120.0, api_key: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.api_key = api_key

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str = "application/json", accept_error: bool = False) -> tuple[int, Any]:
        """Send one request; returns (status, decoded JSON). Raises GatewayError on 4xx/5xx unless
        `accept_error`, GatewayUnreachable when nothing answers."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as e:
            doc = _decode(e.read())
            if accept_error:
                return e.code, doc
            err = doc.get("error", {}) if isinstance(doc, dict) else {}
            raise GatewayError(e.code, err.get("code", "http_error"), err.get("message", e.reason)) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise GatewayUnreachable(f"no gateway at {self.base} ({reason}); start one with `gpufaas up` or set --gateway / ${ENV_GATEWAY}") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)[1]

    def deploy_function(self, spec: dict, files: dict[str, str]) -> dict:
        return self.request("POST", "/v1/functions", {"spec": spec, "files": files})[1]

    def deploy_workflow(self, spec: dict) -> dict:
        return self.request("POST", "/v1/workflows", spec)[1]

    def invoke(self, workflow: str, data: Any = None, slo_ms: float | None = None, *, mode: str = "sync") -> tuple[int, dict]:
        body: dict[str, Any] = {}
        if data is not None:
            body["data"] = data
        if slo_ms is not None:
            body["slo_ms"] = slo_ms
        q = "?mode=async" if mode == "async" else ""
        return self.request("POST", f"/v1/workflows/{workflow}/invoke{q}", body)

    def find(self, name: str) -> tuple[str, dict]:
        """('workflow'|'function', its description); GatewayError 404 when neither exists."""
        st, doc = self.request("GET", f"/v1/workflows/{name}", accept_error=True)
        if st == 200:
            return "workflow", doc
        if st != 404:
            raise GatewayError(st, doc.get("error", {}).get("code", "http_error"), doc.get("error", {}).get("message", ""))
        st, doc = self.request("GET", f"/v1/functions/{name}", accept_error=True)
        if st == 200:
            return "function", doc
        raise GatewayError(404, "not_found", f"no workflow or function named '{name}'; see gpufaas ls")


def _decode(data: bytes) -> Any:
    if not data:
        return {}
    try:
        return json.loads(data)
    except ValueError:
        return {"text": data.decode(errors="replace")}


# ---------------------------------------------------------------- the stack manifest


class StackSpec(Spec):
    """`stack.yaml`: what `gpufaas deploy -f` sends. Functions are bundle folders (holding function.yaml)
    or inline specs; workflows are YAML files or inline specs; paths are relative to the stack file."""

    version: str = Field(description="manifest schema version; only '1' exists")
    functions: list[str | dict] = Field(default_factory=list, description="bundle folders (or inline function specs)")
    workflows: list[str | dict] = Field(default_factory=list, description="workflow YAML files (or inline specs)")


def load_stack(path: str | Path, env: dict[str, str] | None = None) -> list[tuple[str, dict, dict[str, str]]]:
    """Read a stack manifest (with ${VAR} substitution) into [(kind, spec, files)], functions first.
    SpecError (one line, naming the file and field) on any problem; nothing is sent before it all loads."""
    from gpufaas.platform.specs import FunctionSpec, WorkflowSpec, parse

    path = Path(path)
    env = dict(os.environ) if env is None else env
    data = read_yaml(path, env=env)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with version, functions and workflows")
    if "version" in data and not isinstance(data["version"], str):
        data["version"] = str(data["version"])
    stack = parse(StackSpec, data, str(path))
    if stack.version not in STACK_VERSIONS:
        raise SpecError(f"{path}: version: unsupported version {stack.version!r}; write version: \"1\"")
    out: list[tuple[str, dict, dict[str, str]]] = []
    for i, entry in enumerate(stack.functions):
        files: dict[str, str] = {}
        if isinstance(entry, str):
            d = (path.parent / entry).resolve()
            if not (d / "function.yaml").is_file():
                raise SpecError(f"{path}: functions[{i}]: '{entry}' is not a bundle folder with function.yaml (looked in {d}); fix the path")
            spec = read_yaml(d / "function.yaml", env=env)
            files = _bundle_files(d, f"{path}: functions[{i}]")
            where = f"{d / 'function.yaml'}"
        else:
            spec, where = entry, f"{path}: functions[{i}]"
        parse(FunctionSpec, spec, where)
        out.append(("function", spec, files))
    for i, entry in enumerate(stack.workflows):
        if isinstance(entry, str):
            p = (path.parent / entry).resolve()
            if not p.is_file():
                raise SpecError(f"{path}: workflows[{i}]: '{entry}' not found (looked for {p}); fix the path")
            spec, where = read_yaml(p, env=env), str(p)
        else:
            spec, where = entry, f"{path}: workflows[{i}]"
        parse(WorkflowSpec, spec, where)
        out.append(("workflow", spec, {}))
    return out


def _bundle_files(d: Path, where: str) -> dict[str, str]:
    """The small text files of a bundle (handler.py and friends), function.yaml excluded. SpecError past the
    gateway's limits on bundles (`specs.MAX_BUNDLE_*`), before anything is sent."""
    files: dict[str, str] = {}
    total = 0
    for p in sorted(d.rglob("*")):
        if not p.is_file() or p.name == "function.yaml" or "__pycache__" in p.parts or p.suffix not in BUNDLE_SUFFIXES:
            continue
        size = p.stat().st_size
        if size > MAX_BUNDLE_FILE_BYTES:
            raise SpecError(f"{where}: {p.name} is over {MAX_BUNDLE_FILE_BYTES >> 20} MB; bundles carry code, not weights")
        total += size
        if len(files) == MAX_BUNDLE_FILES or total > MAX_BUNDLE_BYTES:
            raise SpecError(f"{where}: {d} holds over {MAX_BUNDLE_FILES} files or {MAX_BUNDLE_BYTES >> 20} MB of them; "
                            "bundles carry code, not weights")
        try:
            files[p.relative_to(d).as_posix()] = p.read_text()
        except UnicodeDecodeError:
            raise SpecError(f"{where}: {p} is not UTF-8 text; bundles carry source files only") from None
    return files


class DeployWatcher(Protocol):
    """Told about each item of a deploy as it goes (`gpufaas deploy` draws a progress line per item).
    Called from the deploy's worker threads: implementations must be thread-safe."""

    def started(self, kind: str, name: str) -> None:
        """The request for this function or workflow was sent."""

    def finished(self, kind: str, name: str, result: str) -> None:
        """The gateway answered `result` ('created', 'updated', 'unchanged') for it."""


def deploy_stack(client: Client, items: list[tuple[str, dict, dict[str, str]]], parallel: int = 4,
                 watcher: DeployWatcher | None = None) -> list[dict]:
    """Send the functions (up to `parallel` at once: the gateway checks each bundle in a fresh interpreter,
    which takes seconds), then the workflows in order. Returns the gateway's answers in manifest order;
    the first error raises once the requests in flight have ended. `watcher` hears of each start and end."""
    from concurrent.futures import ThreadPoolExecutor

    def send(kind: str, spec: dict, files: dict[str, str]) -> dict:
        if watcher is not None:
            watcher.started(kind, spec["name"])
        doc = client.deploy_function(spec, files) if kind == "function" else client.deploy_workflow(spec)
        if watcher is not None:
            watcher.finished(kind, spec["name"], doc.get("result", "?"))
        return doc

    fns = [(spec, files) for kind, spec, files in items if kind == "function"]
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(send, "function", spec, files) for spec, files in fns]
        out = [f.result() for f in futures]
    for kind, spec, _ in items:
        if kind == "workflow":
            out.append(send("workflow", spec, {}))
    return out
