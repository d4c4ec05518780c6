"""Server settings: one frozen object, built once at start-up and passed down.

Sources, highest priority first: command-line flags, environment variables (`SEQCAST_PORT=...`),
a TOML file (`--config seqcast.toml` or `SEQCAST_CONFIG`), the defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEQCAST_", frozen=True, extra="forbid")

    # Where to listen. Port 0 picks a free port (printed at start-up).
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)

    # Prometheus metrics (`/metrics`) over HTTP, on its own port; None turns the endpoint off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(9464, ge=0, le=65535)
    # A second, plaintext gRPC listener (on `host`) serving only grpc.health.v1, for probes that
    # can't speak TLS (Kubernetes' gRPC probes); None: health is served on `port` only.
    health_port: int | None = Field(None, ge=0, le=65535)

    # TLS on `port` from PEM files: the server's certificate chain and key; with a client CA,
    # mutual TLS (clients must present a certificate signed by it). Read once at start-up.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    # After SIGTERM: health turns NOT_SERVING, no new calls are accepted, and running calls get
    # this long to finish before the process exits.
    drain_seconds: float = Field(10.0, ge=0)
    # Connections older than this are closed gracefully (running calls finish), so clients
    # re-resolve DNS and spread over replicas added since; 0 keeps connections open forever.
    max_connection_age_seconds: float = Field(0.0, ge=0)

    # Bundles: every models/<name>/<version>/ below this directory; the highest version per name.
    model_dir: Path = Path("models")
    # Models used when a request names none; empty: "en-de" (translation) and "tourism"
    # (forecast) if loaded, else the first of the task by name.
    default_model: str = ""
    default_forecast_model: str = ""

    # ONNX Runtime: "auto" uses CUDA where onnxruntime-gpu and a GPU are present.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(1, ge=1)
    allow_spinning: bool = False

    # Request limits. Texts longer than max_input_chars, or longer than the model's
    # max_source_tokens once tokenized, are refused with INVALID_ARGUMENT (never truncated).
    max_texts_per_request: int = Field(64, ge=1)
    max_input_chars: int = Field(2000, ge=1)
    # Series in one forecast request (a request larger than max_batch_rows joins in chunks).
    max_series_per_request: int = Field(4096, ge=1)
    # Beam search: the largest beam a request may ask for.
    max_beam_size: int = Field(8, ge=1)
    # Scheduling, per model: "inflight" (requests join the running batch at every step),
    # "static" (join only an empty batch) or "none" (one request at a time).
    batching: Literal["inflight", "static", "none"] = "inflight"
    # Rows decoded together (a text is one row, beam_size rows with beam search) and decoder
    # state (caches, encoder outputs) above which new requests wait for rows to leave.
    max_batch_rows: int = Field(256, ge=1)
    max_state_mb: int = Field(512, ge=1)
    # In-flight batching: with five or more requests decoding, arrivals join once they number a
    # quarter of them or the first has waited this long: one encoder call and one cache merge for
    # several. 0 joins every arrival at the next step.
    join_wait_ms: float = Field(15.0, ge=0, le=1000)
    # Largest request or reply message. gRPC's default of 4 MiB holds about 500 series of 1,000
    # values; 1,024 series of a week of half-hourly values need more.
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=4 * 1024 * 1024)
    # Requests waiting per model to join the batch; more get RESOURCE_EXHAUSTED at once.
    max_queued_requests: int = Field(64, ge=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # TOML file read below the environment; set by --config or SEQCAST_CONFIG.
    config: Path | None = None

    @model_validator(mode="after")
    def _model_dir_exists(self) -> "ServerSettings":
        if not self.model_dir.is_dir():
            raise ValueError(f"model_dir {self.model_dir} is not a directory")
        return self

    @model_validator(mode="after")
    def _tls_files(self) -> "ServerSettings":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a file")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        import os

        config = init_settings.init_kwargs.get("config") or os.environ.get("SEQCAST_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config:
            if not Path(config).is_file():
                raise ValueError(f"config file {config} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)
