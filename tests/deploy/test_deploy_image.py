"""The container images (deploy/docker/), checked without a Docker engine: hadolint on both
Dockerfiles, the GPU image's onnxruntime-gpu swap against pyproject.toml, what the final stages
run and configure against the real settings class, the build context, and the wheel both images
install."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from seqcast.server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
GPU, CPU = DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"
IMAGES = {"gpu": GPU, "cpu": CPU}
# What the server listens on in the images: gRPC, the plaintext health listener, /metrics.
PORTS = {50051, 50052, 9464}


# -- A Dockerfile, read as far as these checks need ------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for inst, args in self.instructions if inst == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def args(self) -> dict[str, str]:
        """Build arguments declared in this stage, with their defaults."""
        return dict(a.partition("=")[::2] for a in self.all("ARG"))


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, each a list of instructions with continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments may sit inside a continued instruction too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, f"{path.name}: the last instruction ends in a continuation"
    stages: list[Stage] = []
    for line in lines:
        inst, _, args = line.partition(" ")
        inst, args = inst.upper(), args.strip()
        if inst == "FROM":
            words = args.split()
            stages.append(Stage(base=words[0], name=words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
        else:
            assert stages, f"{path.name}: {inst} before FROM"
            stages[-1].instructions.append((inst, args))
    return stages


def copy_sources(stage: Stage) -> list[str]:
    """Build-context paths a stage copies, with build arguments at their defaults."""
    defaults = stage.args()
    sources = []
    for args in stage.all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        for src in [w for w in words if not w.startswith("--")][:-1]:
            sources.append(re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], src))
    return sources


# -- .dockerignore, matched the way Docker does for the patterns this repository uses ----------

def dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, excludes) per line: `!` lines re-include; the last matching line wins."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern):
            if part == "**/":
                regex += "(?:.*/)?"
            elif part == "**":
                regex += ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            elif part.startswith("[") and part.endswith("]"):
                regex += part
            else:
                regex += re.escape(part)
        rules.append((re.compile(regex + r"\Z"), not include))
    return rules


def ignored(path: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether Docker leaves `path` out of the context: a pattern matching it or a parent of it."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for regex, excludes in rules:
        if any(regex.match(p) for p in prefixes):
            result = excludes
    return result


def files_under(source: str) -> list[str]:
    """Files git tracks under a build-context path (what a fresh clone's build would send)."""
    out = subprocess.run(["git", "ls-files", "--", source], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"git ls-files failed: {out.stderr.strip()}")
    return out.stdout.split()


# -- Lint ------------------------------------------------------------------------------------

def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_passes(image: str) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]')")
    out = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(IMAGES[image])],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hadolint {IMAGES[image].name}:\n{out.stdout}{out.stderr}"


# -- The GPU image's dependencies ------------------------------------------------------------

def test_gpu_requirements_are_pyprojects_server_extra_with_onnxruntime_gpu() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    server = [*project["dependencies"], *project["optional-dependencies"]["server"]]
    ort = [d for d in server if re.match(r"onnxruntime\s*==", d)]
    assert len(ort) == 1, f"the server extra should pin onnxruntime exactly once: {server}"
    expected = [re.sub(r"^onnxruntime(?=\s*==)", "onnxruntime-gpu", d) for d in server]
    lines = (DOCKER / "requirements-gpu.txt").read_text().splitlines()
    listed = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert listed == expected


def test_gpu_image_never_installs_the_cpu_onnxruntime() -> None:
    builder = parse_dockerfile(GPU)[0]
    assert "deploy/docker/requirements-gpu.txt" in copy_sources(builder)
    installs = [cmd for run in builder.all("RUN") for cmd in re.split(r"&&|;", run) if "pip install" in cmd]
    assert any("-r requirements-gpu.txt" in cmd for cmd in installs)
    # Everything else (the project's own wheel, whose metadata names onnxruntime) without deps.
    for cmd in installs:
        assert "-r requirements-gpu.txt" in cmd or "--no-deps" in cmd, cmd


def test_cpu_image_installs_the_server_extra_of_its_own_wheel() -> None:
    builder = parse_dockerfile(CPU)[0]
    installs = [cmd for run in builder.all("RUN") for cmd in re.split(r"&&|;", run) if "pip install" in cmd]
    assert len(installs) == 1 and '"${wheel}[server]"' in installs[0], installs
    assert any('wheel="$(echo /wheels/seqcast-*.whl)"' in run for run in builder.all("RUN"))


def test_gpu_image_runs_on_cuda_13_with_cudnn() -> None:
    # onnxruntime-gpu's PyPI wheels are the CUDA 13 build and bring no CUDA libraries.
    base = parse_dockerfile(GPU)[-1].base
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", base), base


# -- What the final stages run ---------------------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_runs_seqcast_serve_as_a_numeric_non_root_user(image: str) -> None:
    final = parse_dockerfile(IMAGES[image])[-1]
    users = final.all("USER")
    assert users, "the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    # Exec form: seqcast is PID 1 and receives SIGTERM itself (a shell would swallow it).
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["seqcast", "serve"]
    assert not final.all("CMD")
    exposed = {int(p.split("/")[0]) for args in final.all("EXPOSE") for p in args.split()}
    assert PORTS <= exposed


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_works_on_a_read_only_root_filesystem(image: str) -> None:
    env = parse_dockerfile(IMAGES[image])[-1].env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("image", IMAGES)
def test_image_settings_come_from_its_settings_file_alone(image: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    final = parse_dockerfile(IMAGES[image])[-1]
    env = {k: v for k, v in final.env().items() if k.startswith("SEQCAST_")}
    # Any other SEQCAST_* variable would silently win over a settings file mounted in its place.
    assert env == {"SEQCAST_CONFIG": "/etc/seqcast/seqcast.toml"}
    assert "deploy/docker/seqcast.toml /etc/seqcast/seqcast.toml" in final.all("COPY")

    for name in [k for k in os.environ if k.startswith("SEQCAST_")]:
        monkeypatch.delenv(name)
    config = tomllib.loads((REPO / "deploy/docker/seqcast.toml").read_text())
    assert config["model_dir"] == "/opt/seqcast/models"
    config["model_dir"] = str(tmp_path)  # the image's path does not exist here
    settings = ServerSettings(**config)
    assert (settings.host, settings.metrics_host) == ("0.0.0.0", "0.0.0.0")
    assert (settings.port, settings.health_port, settings.metrics_port) == (50051, 50052, 9464)
    assert (settings.default_model, settings.default_forecast_model) == ("en-de", "tourism")


# -- The build context -----------------------------------------------------------------------

def test_dockerignore_leaves_out_environments_and_runs() -> None:
    rules = dockerignore_rules()
    for path in [".venv/bin/python", "runs/en-de/checkpoint.pt", ".git/HEAD",
                 "server/__pycache__/app.cpython-312.pyc", "tests/deploy/crd/node_modules/x/package.json"]:
        assert ignored(path, rules), path


@pytest.mark.parametrize("image", IMAGES)
def test_dockerignore_keeps_everything_the_dockerfile_copies(image: str) -> None:
    rules = dockerignore_rules()
    # The default MODELS and the empty directory the header suggests for mounting a volume.
    sources = {s for stage in parse_dockerfile(IMAGES[image]) for s in copy_sources(stage)} | {"deploy/docker/no-models"}
    for source in sorted(sources):
        assert (REPO / source).exists(), f"{image} copies {source}, which does not exist"
        assert not ignored(source, rules), f".dockerignore leaves out {source}"
        left_out = [f for f in files_under(source) if ignored(f, rules)]
        assert not left_out, f".dockerignore leaves out files under {source}: {left_out[:5]}"


# -- The wheel both images install (built once per session: tests/conftest.py) ----------------

def test_wheel_holds_the_server_and_the_generated_protos(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for name in ["seqcast/server/app.py", "seqcast/server/cli.py", "seqcast/v1/seqcast_pb2.py",
                 "seqcast/v1/seqcast_pb2_grpc.py"]:
        assert name in names, name


def test_wheel_requires_onnxruntime_only_in_the_server_extra_and_torch_only_in_train(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in zf.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]

    def names(extra: str | None) -> set[str]:
        chosen = [r for r in requires if (f'extra == "{extra}"' in r if extra else "extra ==" not in r)]
        return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in chosen}

    assert names(None).isdisjoint({"torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu"})
    assert "onnxruntime" in names("server") and names("server").isdisjoint({"onnxruntime-gpu", "torch"})
    assert "torch" in names("train")


def test_wheel_alone_serves_without_torch(wheel: Path, tmp_path: Path) -> None:
    """The wheel installed on its own (no checkout beside it) imports the server and parses
    `seqcast serve` with torch unavailable, as in both images."""
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                          "--no-cache-dir", "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
        "import seqcast.server.app\n"
        "from seqcast.export.cli import build_parser\n"
        f"assert seqcast.server.app.__file__.startswith({str(site)!r}), seqcast.server.app.__file__\n"
        "print(build_parser().parse_args(['serve']).command)\n"
    )
    run = subprocess.run([sys.executable, "-B", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "serve"
