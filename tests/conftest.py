"""Shared fixtures: tiny models trained and exported once per session through the real CLI,
and a real gRPC server on 127.0.0.1 serving them."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from seqcast.server.app import RunningServer, create_server
from seqcast.export.cli import main as seqcast
from seqcast.server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "en-de"
# The project's own tools come first on PATH, for the tests and every process they start:
# promtool and prometheus in .tools/bin, kubectl and the console scripts beside this Python
# (scripts/install-deploy-tools.sh puts them there; `make test` runs it).
TOOLS_BIN = REPO / ".tools" / "bin"
os.environ["PATH"] = os.pathsep.join([str(TOOLS_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
# Sources the wheel is built from: what the Dockerfiles copy into the builder stage.
WHEEL_SOURCES = ["pyproject.toml", "README.md", "bundle", "server", "clients", "export", "protos"]

# Small enough to train in well under a minute on 2 cores, trained enough that greedy decoding
# produces real token sequences (not just end-of-sequence), which the token-equality tests need.
_TINY = ["--vocab-size", "1000", "--d-model", "64", "--n-heads", "4", "--layers", "2", "--d-ff", "128",
         "--train-limit", "20000", "--test-limit", "24", "--batch-tokens", "2500", "--lr", "3e-3",
         "--warmup-steps", "30", "--eval-every", "150", "--threads", "2", "--corpus", str(CORPUS)]
# The GRU's decoder steps through time in Python, so it trains on sentences of at most 48 tokens
# (the first 24 test sentences have 14 or fewer): 250 such steps cost less than 150 unrestricted
# ones and leave it producing 3-4 tokens a sentence.
TINY_MODELS = {"tiny-transformer": ["--architecture", "transformer", "--steps", "150"],
               "tiny-gru": ["--architecture", "gru-attention", "--steps", "250", "--dropout", "0.1",
                            "--max-tokens", "48", "--eval-every", "250"]}
# Forecasters on tourism: a few steps are enough for parity and serving tests.
_TINY_FORECAST = ["--data", "tourism", "--d-model", "16", "--n-heads", "2", "--layers", "1", "--d-ff", "32",
                  "--steps", "40", "--eval-every", "40", "--batch-size", "64", "--threads", "2"]
TINY_FORECASTERS = {"tiny-forecast-transformer": ["--architecture", "transformer"],
                    "tiny-forecast-lstm-additive": ["--architecture", "lstm-additive"],
                    "tiny-forecast-lstm-dot": ["--architecture", "lstm-dot"],
                    "tiny-forecast-ar": ["--architecture", "ar"],
                    "tiny-forecast-mlp": ["--architecture", "mlp", "--members", "2"],
                    "tiny-forecast-lstm-theta": ["--architecture", "lstm-dot", "--theta-weight", "0.5"]}


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training run directories by model name."""
    root = tmp_path_factory.mktemp("runs")
    for name, args in TINY_MODELS.items():
        assert seqcast(["--log-level", "WARNING", "train", "--run-dir", str(root / name), *_TINY, *args]) == 0
    for name, args in TINY_FORECASTERS.items():
        assert seqcast(["--log-level", "WARNING", "train-forecast", "--run-dir", str(root / name), *_TINY_FORECAST, *args]) == 0
    return {name: root / name for name in [*TINY_MODELS, *TINY_FORECASTERS]}


@pytest.fixture(scope="session")
def model_dir(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding one exported bundle per tiny model."""
    root = tmp_path_factory.mktemp("models")
    for name, run_dir in runs.items():
        assert seqcast(["--log-level", "WARNING", "export", "--run-dir", str(run_dir), "--models-dir", str(root), "--name", name]) == 0
    return root


class ServerThread:
    """A real grpc.aio server running on its own event loop in a background thread."""

    def __init__(self, settings: ServerSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = self._call(create_server(settings))
        self.target = f"127.0.0.1:{self.running.port}"

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def stop(self) -> None:
        self._call(self.running.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def committed_models(target: Path, names: tuple[str, ...] = ("en-de", "tourism")) -> Path:
    """A model directory under `target` linking the committed bundles `names` (models/<name>/):
    a real server in seconds, without the session's trained models."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).symlink_to(REPO / "models" / name, target_is_directory=True)
    return target


def start_server(model_dir: Path, **overrides: object) -> ServerThread:
    settings = {"default_model": "tiny-transformer", "default_forecast_model": "tiny-forecast-transformer",
                "metrics_port": 0, **overrides}
    return ServerThread(ServerSettings(model_dir=model_dir, port=0, **settings))


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[ServerThread]:
    srv = start_server(model_dir)
    yield srv
    srv.stop()


@pytest.fixture()
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture()
def copy_models(model_dir: Path, tmp_path: Path):
    """Copies the session's bundles into a fresh directory the test may damage."""

    def copy() -> Path:
        target = tmp_path / "models"
        shutil.copytree(model_dir, target)
        return target

    return copy


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per session as the Dockerfiles build it (`pip wheel --no-deps`),
    from a copy of the sources they copy, so the working tree gets no build/ or egg-info."""
    try:
        setuptools = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("setuptools is not installed, and building offline needs it in this environment")
    if int(setuptools.split(".")[0]) < 77:  # pyproject's SPDX `license` string needs 77
        pytest.skip(f"setuptools {setuptools} is too old to build offline (needs 77+)")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in WHEEL_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "--no-cache-dir", "-w", str(root / "dist"), str(src)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    (built,) = (root / "dist").glob("seqcast-*.whl")
    return built
