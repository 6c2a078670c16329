"""Live backends by name: one registry that refuses duplicates, the one place that knows how each is built.

Who calls it: the gateway (`gpufaas up --backend NAME`) and `gpufaas bench dispatch`, through
`build_backend(name, clock, options, bundle_dir)`; the conformance suite walks `backend_names()`.
`builtin_registry()` lists every in-tree live backend in one place; a backend whose module needs an
optional package (docker, ray) is imported only when it is built, and a missing package is a UserError
naming it. The sim backend and the test fake are not here: the simulator and the tests build them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Literal

from gpufaas.platform.backends.interface import LiveBackend
from gpufaas.platform.clock import Clock
from gpufaas.platform.errors import UserError
from gpufaas.platform.registry import NamedRegistry

BundleDir = Callable[[str], Path]  # function name -> its bundle folder


@dataclass(frozen=True)
class BackendOptions:
    """What a live backend is built with (the gateway fills it from its config; each backend takes the
    fields it needs)."""

    execute: Literal["emulated", "real"] = "emulated"  # real: run the handler's forward pass (not inproc)
    cold_start_scale: float = 1.0  # inproc: multiply profiled cold starts by this (0 = instant)
    threads_per_worker: int = 1  # process: torch threads per worker process
    scope: str = "default"  # docker: label of this gateway's containers (orphans of a crash are removed by it)
    bundles_dir: Path = Path("bundles")  # docker: where function bundles live (`<bundles_dir>/<name>`)

    def __post_init__(self) -> None:
        if self.execute not in ("emulated", "real"):
            raise UserError(f"--execute: must be emulated or real, not {self.execute!r}")
        if self.cold_start_scale < 0:
            raise UserError(f"cold_start_scale must be >= 0, not {self.cold_start_scale}")
        if self.threads_per_worker < 1:
            raise UserError(f"threads_per_worker must be >= 1, not {self.threads_per_worker}")


BackendFactory = Callable[[Clock, BackendOptions, BundleDir], LiveBackend]


class BackendRegistry(NamedRegistry[BackendFactory]):
    """Name -> factory of a live backend. `register` raises on a duplicate name; names keep their order (the
    default first)."""

    kind = "backend"

    def build(self, name: str, clock: Clock, options: BackendOptions, bundle_dir: BundleDir) -> LiveBackend:
        """A new backend, ready for `Controller(...)`; its blocking set-up is `prepare`, called by the caller.
        UserError for an unknown name (listing the registered ones) or a missing optional package."""
        factory = self._entries.get(name)
        if factory is None:
            *rest, last = self.names()
            known = f"{', '.join(rest)} or {last}" if rest else last
            raise UserError(f"--backend: unknown backend {name!r}; use {known}")
        return factory(clock, options, bundle_dir)


def _optional(modname: str, flag: str) -> ModuleType:
    """Import a backend module that needs an optional package; UserError names the missing package."""
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name != modname:
            raise UserError(f"{flag}: needs the Python package '{e.name}', which is not installed; install it or use --backend inproc") from None
        raise UserError(f"{flag}: this checkout has no {modname}; use --backend inproc") from None


def _inproc(clock: Clock, options: BackendOptions, bundle_dir: BundleDir) -> LiveBackend:
    if options.execute != "emulated":
        raise UserError("--execute real needs --backend process (or docker/ray); the inproc backend only emulates")
    from gpufaas.platform.backends.inproc import InprocBackend

    return InprocBackend(clock, cold_start_scale=options.cold_start_scale)


def _process(clock: Clock, options: BackendOptions, bundle_dir: BundleDir) -> LiveBackend:
    mod = _optional("gpufaas.platform.backends.process", "--backend process")
    return mod.ProcessBackend(clock, execute=options.execute, bundle_dir=bundle_dir, threads_per_worker=options.threads_per_worker)


def _docker(clock: Clock, options: BackendOptions, bundle_dir: BundleDir) -> LiveBackend:
    # NOTE: as the gateway built it before this registry: `execute` only switches the emulated latency
    # off; the containers' worker runs emulated (DockerBackend(execute="real") exists, unused here).
    mod = _optional("gpufaas.platform.backends.docker_backend", "--backend docker")
    return mod.DockerBackend(scope=options.scope, bundle_root=options.bundles_dir, emulate_latency=options.execute == "emulated")


def _ray(clock: Clock, options: BackendOptions, bundle_dir: BundleDir) -> LiveBackend:
    mod = _optional("gpufaas.platform.backends.ray_backend", "--backend ray")
    return mod.RayBackend(emulate_latency=options.execute == "emulated")


def builtin_registry() -> BackendRegistry:
    """Every in-tree live backend, registered here and nowhere else (the gateway's default first)."""
    reg = BackendRegistry()
    reg.register("process", _process)
    reg.register("inproc", _inproc)
    reg.register("docker", _docker)
    reg.register("ray", _ray)
    return reg


def backend_names() -> list[str]:
    """The built-in live backends' names (for `--backend` choices)."""
    return builtin_registry().names()


def build_backend(name: str, clock: Clock, options: BackendOptions, bundle_dir: BundleDir) -> LiveBackend:
    """Shortcut: build a live backend from the built-in registry (see `BackendRegistry.build`)."""
    return builtin_registry().build(name, clock, options, bundle_dir)
