"""`GatewayConfig`: everything `gpufaas up` can set, as one frozen pydantic model (flags map onto fields).

Who builds it: `gpufaas up` (from flags), the demo, the benchmark and the tests. Who reads it:
`create_app(cfg)` and, through `backend_options()`, the platform's backend registry. Building it has no side effects (no folder is created
until the app starts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpufaas.platform.backends.registry import BackendOptions, backend_names
from gpufaas.platform.residency import registry as residency_registry
from gpufaas.platform.shipped import clusters_dir
from gpufaas.platform.units import MAX_DURATION_S

BACKENDS = tuple(backend_names())  # the live backend registry's names, the default first
DEFAULT_CLUSTER = clusters_dir() / "a100x4.yaml"


DEFAULT_DATA_DIR = ".gpufaas"
ADMIN_KEY_FILE = "admin.key"  # in the data dir: the admin key, written once (the CLI reads it for a local gateway)


class GatewayConfig(BaseModel):
    """Configuration of one gateway process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 = any free port)")
    cluster_file: Path | None = Field(None, description="cluster YAML; None = one node with four A100-80GB")
    policy: str | None = Field(None, description="policy name; None = 'esg' if registered, else 'batch1-wholegpu'")
    policy_params: dict = Field(default_factory=dict, description="keyword parameters of the policy")
    backend: str = Field(BACKENDS[0], description=f"where instances run: {', '.join(BACKENDS)} (platform/backends/registry.py)")
    execute: Literal["emulated", "real"] = Field("emulated", description="emulated: hold for the profiled latency; real: run the handler")
    data_dir: Path = Field(Path(DEFAULT_DATA_DIR), description="folder of the SQLite store and the uploaded bundles")
    max_body_mb: float = Field(16.0, gt=0, description="largest request body accepted (413 above it), MB")
    invocation_timeout_s: float = Field(30.0, gt=0, le=MAX_DURATION_S, description="an invocation still running after this long ends as timed_out")
    keep_alive_s: float = Field(60.0, ge=0, le=MAX_DURATION_S, description="default idle time before an instance is stopped")
    residency: str = Field(residency_registry.DEFAULT, description="residency policy: which idle instances stay resident "
                           f"and for how long ({', '.join(residency_registry.builtin_registry().names())})")
    cold_start_scale: float = Field(1.0, ge=0, description="inproc backend: multiply profiled cold starts by this (0 = instant)")
    zero_profile: bool = Field(False, description="register a 0 ms profile 'zero' (gateway overhead benchmark)")
    threads_per_worker: int = Field(1, ge=1, description="process backend: torch threads per worker process")
    admin_key: str | None = Field(None, min_length=16, description="the admin key to install at the first start (None: a random one); "
                                                                  "written to <data-dir>/admin.key either way")
    access_log: bool = Field(False, description="log every request (off: it costs throughput)")
    result_retention_s: float = Field(86400.0, gt=0, le=3.2e7, allow_inf_nan=False,
                                      description="how long a finished async invocation's result is kept (then 404, as an unknown id)")

    @model_validator(mode="after")
    def _check(self) -> "GatewayConfig":
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: {self.backend!r} is not a backend; use one of {', '.join(BACKENDS)}")
        if self.residency not in residency_registry.builtin_registry():
            raise ValueError(f"residency: {self.residency!r} is not a residency policy; use one of "
                             f"{', '.join(residency_registry.builtin_registry().names())}")
        if self.backend == "inproc" and self.execute == "real":
            raise ValueError("execute: real needs backend process (or docker/ray); the inproc backend only emulates")
        return self

    @property
    def client_max_size(self) -> int:
        """aiohttp's body limit in bytes."""
        return int(self.max_body_mb * 1024 * 1024)

    def backend_options(self) -> BackendOptions:
        """What the backend registry builds `backend` with (`gpufaas.platform.backends.registry.build_backend`)."""
        return BackendOptions(execute=self.execute, cold_start_scale=self.cold_start_scale,
                              threads_per_worker=self.threads_per_worker, scope=f"gw{self.port}", bundles_dir=self.bundles_dir)

    @property
    def admin_key_file(self) -> Path:
        """Where the gateway writes its admin key at the first start (mode 0600)."""
        return self.data_dir / ADMIN_KEY_FILE

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.sqlite3"

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "bundles"
