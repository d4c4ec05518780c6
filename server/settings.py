"""Server settings: one frozen object, built once at start-up and passed down.

Sources, highest priority first: command-line flags, environment variables (`SEQCAST_PORT=...`),
a TOML file (`--config seqcast.toml` or `SEQCAST_CONFIG`), the defaults below. `add_flags` turns
the fields into command-line flags, so a new setting is a flag without more code.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class ServerSettings(BaseSettings):
    """Every server setting and its default: the one source of both. `seqcast serve`'s flags are
    generated from these fields (`--max-batch-rows` for `max_batch_rows`), with their descriptions
    as help, and the scheduler's limits are built from them."""

    model_config = SettingsConfigDict(env_prefix="SEQCAST_", frozen=True, extra="forbid")

    # Where to listen.
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one (printed at start-up)")

    # Prometheus metrics (`/metrics`) over HTTP, on its own port.
    metrics_host: str = Field("127.0.0.1", description="address of the Prometheus /metrics endpoint")
    metrics_port: int | None = Field(9464, ge=0, le=65535, description="port of the /metrics endpoint; 0 picks a free one")
    # The HTTP/JSON front end (LibreTranslate /translate and /languages, /v1/timeseries/forecast).
    # Off by default: it is a second, plaintext listener that the tls_* settings do not cover.
    http_host: str = Field("127.0.0.1", description="address of the HTTP/JSON front end")
    http_port: int | None = Field(
        None, ge=0, le=65535,
        description="serve the HTTP/JSON front end (LibreTranslate /translate, /languages, /v1/timeseries/forecast) "
        "on this port, plaintext; unset: off; 0 picks a free one",
    )
    health_port: int | None = Field(
        None, ge=0, le=65535,
        description="also serve grpc.health.v1 in plaintext on this port, for probes that can't speak TLS",
    )

    # TLS on `port` from PEM files, read once at start-up.
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: serve TLS (with tls_key_file)")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: require client certificates it signed (mutual TLS)"
    )

    # Shutdown and connection lifetime.
    drain_seconds: float = Field(
        10.0, ge=0,
        description="after SIGTERM: health turns NOT_SERVING, new calls are refused, and running calls get this long to finish",
    )
    max_connection_age_seconds: float = Field(
        0.0, ge=0,
        description="close connections older than this gracefully, so clients re-resolve DNS and reach new replicas; 0: never",
    )

    # Bundles.
    model_dir: Path = Field(
        Path("models"), description="bundle root: every <name>/<version>/ below it; per name the highest version that loads serves"
    )
    # Live model updates (as TF Serving's file-system polling and Triton's poll mode). A scan
    # lists folders and stats a few files per version, so 10 s costs nothing measurable and puts
    # a new version in service within seconds of its folder appearing.
    model_poll_seconds: float = Field(
        10.0, ge=0,
        description="rescan model_dir this often: load new versions beside the old (traffic moves when ready), "
        "drain and unload replaced or removed ones; 0: load once at start-up",
    )
    default_model: str = Field(
        "", description="translation model for requests that name none; empty: en-de if loaded, else the first by name"
    )
    default_forecast_model: str = Field(
        "", description="forecast model for requests that name none; empty: tourism if loaded, else the first by name"
    )

    # ONNX Runtime.
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA where onnxruntime-gpu and a GPU are present")
    intra_op_threads: int = Field(1, ge=1, description="threads inside one operator; one is fastest at small batches on few cores")
    allow_spinning: bool = Field(False, description="let ONNX Runtime's threads busy-wait between steps (burns a core)")

    # Request limits. Over-long input is refused with INVALID_ARGUMENT, never truncated.
    max_texts_per_request: int = Field(64, ge=1, description="texts in one translation request")
    max_input_chars: int = Field(2000, ge=1, description="characters in one text (tokens are bounded by the model's max_source_tokens)")
    max_series_per_request: int = Field(
        4096, ge=1, description="series in one forecast request (more than max_batch_rows join in chunks)"
    )
    max_beam_size: int = Field(8, ge=1, description="the largest beam a request may ask for")
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=4 * 1024 * 1024,
        description="largest request or reply message (gRPC's 4 MiB default holds about 500 series of 1,000 values)",
    )

    # Scheduling, per model.
    batching: Literal["inflight", "static", "none"] = Field(
        "inflight",
        description="inflight: requests join the running batch at every step; static: join only an empty batch; none: one at a time",
    )
    max_batch_rows: int = Field(256, ge=1, description="rows decoded together (a text is one row, beam_size rows with beam search)")
    max_state_mb: int = Field(512, ge=1, description="decoder state (caches, encoder outputs) above which new requests wait for rows to leave")
    join_wait_ms: float = Field(
        15.0, ge=0, le=1000,
        description="with five or more requests decoding, arrivals join once they number a quarter of them or the first "
        "waited this long (one encoder call and one cache merge for several); 0 joins every arrival at the next step",
    )
    max_queued_requests: int = Field(
        64, ge=0, description="requests per model that can't join the batch now and may wait; more get RESOURCE_EXHAUSTED at once"
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="server log level")

    config: Path | None = Field(None, description="TOML settings file, read below flags and SEQCAST_* variables")

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
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            _check_key_pair(self.tls_cert_file, self.tls_key_file)
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


def _check_key_pair(cert_file: Path, key_file: Path) -> None:
    """Raises ValueError naming both files unless the key is the certificate's (gRPC itself only
    says "Failed to bind to address")."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that gives none: an encrypted key fails here instead of prompting.
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except (ssl.SSLError, OSError) as e:
        raise ValueError(
            f"tls_key_file {key_file} and tls_cert_file {cert_file} are not a usable pair "
            f"(the key must be the certificate's, both PEM, the key unencrypted): {e.strerror or e}"
        ) from None


def _flag_type(annotation: object) -> tuple[type | None, list[str] | None]:
    """The argparse type and choices of a field's annotation (Optional unwrapped)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return str, [str(a) for a in get_args(annotation)]
    if args and get_origin(annotation) is not Literal:
        return _flag_type(args[0])
    return annotation if isinstance(annotation, type) else str, None  # type: ignore[return-value]


def add_flags(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    """One flag per setting (`--max-batch-rows` for `max_batch_rows`) but those in `skip`; unset
    flags stay None, so the environment, the TOML file and the defaults apply below them."""
    for name, field in ServerSettings.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        kind, choices = _flag_type(field.annotation)
        default = "" if field.default in (None, "") else f" (default {field.default})"
        help_text = f"{field.description}{default}"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, choices=choices, default=None, help=help_text)


def from_flags(args: argparse.Namespace) -> ServerSettings:
    """Settings from parsed `add_flags` flags over the environment, the file and the defaults."""
    given = {name: getattr(args, name) for name in ServerSettings.model_fields if getattr(args, name, None) is not None}
    return ServerSettings(**given)
