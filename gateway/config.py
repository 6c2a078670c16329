"""`GatewayConfig`: everything `gpufaas up` can set, as one frozen pydantic model (flags map onto fields).

Who builds it: `gpufaas up` (from flags), the demo, the benchmark and the tests. Who reads it:
`create_app(cfg)` and the backend factory. Building it has no side effects (no folder is created
until the app starts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpufaas.platform.shipped import clusters_dir

BACKENDS = ("process", "inproc", "docker", "ray")
DEFAULT_CLUSTER = clusters_dir() / "a100x4.yaml"


class GatewayConfig(BaseModel):
    """Configuration of one gateway process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 = any free port)")
    cluster_file: Path | None = Field(None, description="cluster YAML; None = one node with four A100-80GB")
    policy: str | None = Field(None, description="policy name; None = 'esg' if registered, else 'batch1-wholegpu'")
    policy_params: dict = Field(default_factory=dict, description="keyword parameters of the policy")
    backend: Literal["process", "inproc", "docker", "ray"] = Field("process", description="where instances run")
    execute: Literal["emulated", "real"] = Field("emulated", description="emulated: hold for the profiled latency; real: run the handler")
    data_dir: Path = Field(Path(".gpufaas"), description="folder of the SQLite store and the uploaded bundles")
    max_body_mb: float = Field(16.0, gt=0, description="largest request body accepted (413 above it), MB")
    invocation_timeout_s: float = Field(30.0, gt=0, description="an invocation still running after this long ends as timed_out")
    keep_alive_s: float = Field(60.0, ge=0, description="default idle time before an instance is stopped")
    cold_start_scale: float = Field(1.0, ge=0, description="inproc backend: multiply profiled cold starts by this (0 = instant)")
    zero_profile: bool = Field(False, description="register a 0 ms profile 'zero' (gateway overhead benchmark)")
    threads_per_worker: int = Field(1, ge=1, description="process backend: torch threads per worker process")
    access_log: bool = Field(False, description="log every request (off: it costs throughput)")

    @model_validator(mode="after")
    def _check(self) -> "GatewayConfig":
        if self.backend == "inproc" and self.execute == "real":
            raise ValueError("execute: real needs backend process (or docker/ray); the inproc backend only emulates")
        return self

    @property
    def client_max_size(self) -> int:
        """aiohttp's body limit in bytes."""
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.sqlite3"

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "bundles"
