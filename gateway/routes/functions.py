"""Routes for functions: deploy with a bundle, list, read, remove."""

from __future__ import annotations

from pathlib import PurePosixPath

from aiohttp import web

from gpufaas.gateway import api
from gpufaas.gateway.http_io import PLATFORM, TENANT, ApiError, read_doc
from gpufaas.gateway.routes.named import Named, add_named_routes
from gpufaas.gateway.service import Platform
from gpufaas.platform.specs import (MAX_BUNDLE_BYTES, MAX_BUNDLE_FILE_BYTES, MAX_BUNDLE_FILES, MAX_BUNDLE_PATH_BYTES, MAX_PATH_COMPONENT_BYTES,
                                    FunctionSpec, parse)


def _bad_file(rel: str, why: str) -> ApiError:
    """422 naming the file: as sent when printable and short, else quoted and cut (one line, no NUL)."""
    shown = rel if rel.isprintable() and 0 < len(rel) <= 120 else repr(rel[:120])
    return ApiError(422, "invalid_manifest", f"files.{shown}: {why}")


def bundle_files(raw: dict[str, str]) -> dict[str, bytes]:
    """A deploy request's `files` as bundle-relative paths -> bytes. 422 naming the file for a path that is
    absolute, leaves the bundle (`..`), holds a NUL or a control character, is not UTF-8-encodable, has a
    component over 255 bytes or is over MAX_BUNDLE_PATH_BYTES, names function.yaml, repeats another path
    once normalised (`a//b`, `./a/b`), or is both a file and a folder (`a` and `a/b`); 422 past the limits
    on files (`specs.MAX_BUNDLE_FILES`, `MAX_BUNDLE_FILE_BYTES`, `MAX_BUNDLE_BYTES`).

    Who calls it: `post_function`, before anything is written. Pure."""
    if len(raw) > MAX_BUNDLE_FILES:
        raise ApiError(422, "invalid_manifest", f"files: {len(raw)} files; a bundle holds at most {MAX_BUNDLE_FILES}")
    out: dict[str, bytes] = {}
    total = 0
    for rel, text in raw.items():
        if any(c == "\x00" or ord(c) < 0x20 or c == "\x7f" for c in rel):
            raise _bad_file(rel, "a bundle path must not hold NUL or control characters")
        try:
            encoded = rel.encode()
            content = text.encode()
        except UnicodeEncodeError:
            raise _bad_file(rel, "the path or the text is not valid Unicode (a lone surrogate); send UTF-8 text") from None
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts or str(p) == "function.yaml":
            raise _bad_file(rel, "a bundle path must be relative, stay inside the bundle and not be function.yaml (send its fields as spec)")
        if len(encoded) > MAX_BUNDLE_PATH_BYTES or any(len(part.encode()) > MAX_PATH_COMPONENT_BYTES for part in p.parts):
            raise _bad_file(rel, f"a bundle path is at most {MAX_BUNDLE_PATH_BYTES} bytes, each of its parts at most {MAX_PATH_COMPONENT_BYTES}")
        if len(content) > MAX_BUNDLE_FILE_BYTES:
            raise _bad_file(rel, f"{len(content)} bytes; a bundle file is at most {MAX_BUNDLE_FILE_BYTES} (bundles carry code, not weights)")
        total += len(content)
        if total > MAX_BUNDLE_BYTES:
            raise ApiError(422, "invalid_manifest", f"files: over {MAX_BUNDLE_BYTES} bytes in all; bundles carry code, not weights")
        key = str(p)
        if key in out:
            raise _bad_file(rel, f"names the same file as another path ({key!r}); send each file once")
        out[key] = content
    # a path that is also the folder of another ('a' and 'a/b') cannot be written
    for key in out:
        for parent in PurePosixPath(key).parents:
            if str(parent) in out:
                raise _bad_file(key, f"is inside {str(parent)!r}, which is a file too; a path is a file or a folder, not both")
    return out


def check_handler(spec: FunctionSpec, files: dict[str, bytes]) -> None:
    """422 when a bundle that was sent lacks the module its spec names as handler (`handler.py` for the
    default 'handler:build'). A spec sent without files is not checked here: it deploys without a bundle
    (the inproc backend runs no handler; the others check the bundle they are given)."""
    if files and spec.handler_file not in files:
        raise ApiError(422, "invalid_manifest", f"spec.handler: {spec.handler!r} needs {spec.handler_file} in files, which has "
                                                f"{', '.join(sorted(files)[:10])}; send it, or name a module of the bundle")


async def post_function(request: web.Request) -> web.Response:
    """POST /v1/functions: a bare spec, or {spec, files}; 201 created, 200 updated or unchanged."""
    plat = request.app[PLATFORM]
    doc, _ = await read_doc(request, allow_yaml=True)
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid_manifest", "request body: expected a mapping (a function spec, or {spec, files})")
    if "spec" in doc:
        bundle = parse(api.FunctionBundle, doc, "request body")
        spec, files = bundle.spec, bundle_files(bundle.files)
        check_handler(spec, files)
    else:
        spec, files = parse(FunctionSpec, doc, "request body"), {}
    result = await plat.deploy_function(request[TENANT].name, spec, files)
    body = {"name": spec.name, "kind": "function", "result": result}
    return web.json_response(body, status=201 if result == "created" else 200)


def add_routes(router: web.UrlDispatcher) -> None:
    """Mount the function routes."""
    router.add_post("/v1/functions", post_function)
    add_named_routes(router, Named("function", Platform.functions_doc, Platform.function_doc, Platform.function_names, Platform.remove_function))
