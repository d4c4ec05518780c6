"""The model lifecycle against a real server on 127.0.0.1 with real ONNX Runtime: every fault a
bundle can have is refused with one log line while the others serve; the version rules; health
that follows what serves; live updates that lose no request.

Bundles are copies of the committed ones (models/), damaged per test. The permission faults run
the server as a non-root user (`setpriv`), since root reads a file whatever its mode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from conftest import REPO, ServerThread, start_server
from seqcast.bundle.loading import sha256
from seqcast.client import SeqcastClient, SeqcastError
from seqcast.export.cli import main as seqcast
from seqcast.server import translation
from seqcast.server.models import StartupRefused
from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

MODELS = REPO / "models"
FORECAST = MODELS / "tourism-ar" / "1"  # 20 kB: loads in milliseconds
TRANSLATION = MODELS / "en-de" / "1"
SERIES = [[float(10 + (i % 4) * 3 + i * 0.1) for i in range(24)]]
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def clone(source: Path, root: Path, name: str, version: str = "1") -> Path:
    """`source` copied to root/name/version with its manifest's name and version set to match;
    large graphs are links to the committed ones (tests that damage a graph use the small bundle)."""
    target = root / name / version
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.stat().st_size > 1 << 20:
            (target / file.name).symlink_to(file)
        else:
            shutil.copy(file, target / file.name)
    edit_manifest(target, name=name, version=version)
    return target


def edit_manifest(bundle: Path, **changes: object) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def rewrite(bundle: Path, file: str, data: bytes) -> None:
    """Replaces a file and records its new checksum: only the content is wrong."""
    (bundle / file).write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][file] = sha256(bundle / file)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _scaling(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["forecast"]["scaling"]["type"] = "robust"
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _flip_byte(bundle: Path) -> None:
    data = bytearray((bundle / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "encoder.onnx").write_bytes(bytes(data))


def _outside(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["../../tourism-ar/1/encoder.onnx"] = manifest["files"]["encoder.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _manifest_directory(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").mkdir()


def _drop_task(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["task"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))


# Fault: (the bundle it damages, the damage, what the refusal line says).
FAULTS: dict[str, tuple[Path, Callable[[Path], None], str]] = {
    "manifest-not-utf8": (FORECAST, lambda b: (b / "manifest.json").write_bytes(b'\xff\xfe{"name": 1}'), "manifest.json is not UTF-8 (byte 0)"),
    "manifest-a-directory": (FORECAST, _manifest_directory, "cannot read manifest.json: Is a directory"),
    "manifest-not-json": (FORECAST, lambda b: (b / "manifest.json").write_text('{"name": '), "manifest.json is not JSON: Expecting value"),
    "manifest-not-an-object": (FORECAST, lambda b: (b / "manifest.json").write_text("[]"), "manifest.json is not a JSON object"),
    "manifest-invalid": (FORECAST, _drop_task, "manifest.json is not a valid manifest: 1 problems, first: task: Field required"),
    "format-version": (FORECAST, lambda b: edit_manifest(b, format_version=2), "manifest.json has format_version 2; this server reads 1"),
    "unknown-scaling": (FORECAST, _scaling, "forecast.scaling is not one this server applies: not a mean_abs scaling entry"),
    "tokenizer-unparsable": (TRANSLATION, lambda b: rewrite(b, "tokenizer.json", b'{"version": "1.0", "model": 7}'),
                             "tokenizer.json does not parse as a tokenizers file"),
    "checksum-mismatch": (FORECAST, _flip_byte, "checksum mismatch for encoder.onnx"),
    "file-missing": (FORECAST, lambda b: (b / "decoder.onnx").unlink(), "file decoder.onnx is missing"),
    "file-outside-bundle": (FORECAST, _outside, "bundle files are plain names inside the bundle"),
    "graph-not-onnx": (FORECAST, lambda b: rewrite(b, "decoder.onnx", b"not a graph"), "ONNX Runtime could not load it"),
    "version-mismatch": (FORECAST, lambda b: edit_manifest(b, version="7"), "manifest.json says version '7' but its folder is '1'"),
}


class Log(logging.Handler):
    """Every message the server logs, for the lifetime of a module's server."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def refusals(self, path: Path) -> list[str]:
        return [line for line in self.lines if line.startswith(f"refusing bundle {path}")]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path, Log]]:
    """One server over a model_dir holding every fault beside a good forecast bundle, rescanned
    every 0.1 s; and the log it wrote."""
    root = tmp_path_factory.mktemp("faulty")
    clone(FORECAST, root, "tourism-ar")
    for fault, (source, damage, _) in FAULTS.items():
        damage(clone(source, root, fault))
    # A second folder whose manifest claims a served model's name (a collision).
    clone(FORECAST, root, "tourism-ar-copy")
    edit_manifest(root / "tourism-ar-copy" / "1", name="tourism-ar")
    # Version rules: a broken highest version over a good one; a non-numeric version folder.
    clone(FORECAST, root, "fallback", "1")
    (clone(FORECAST, root, "fallback", "2") / "manifest.json").write_bytes(b"\xff")
    clone(FORECAST, root, "tourism-ar", "latest")
    (root / "empty").mkdir()
    log = Log()
    logger = logging.getLogger("seqcast.server")
    logger.addHandler(log)
    level = logger.level
    logger.setLevel(logging.INFO)
    srv = start_server(root, default_model="", default_forecast_model="tourism-ar", model_poll_seconds=0.1)
    yield srv, root, log
    srv.stop()
    logger.removeHandler(log)
    logger.setLevel(level)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_bundle_is_refused_with_one_line_naming_the_file_and_the_others_serve(faulty, fault: str) -> None:
    srv, root, log = faulty
    lines = log.refusals(root / fault / "1")
    assert len(lines) == 1, lines
    assert FAULTS[fault][2] in lines[0]
    with SeqcastClient(srv.target) as client:
        assert client.health(fault, timeout=5) == "NOT_SERVING"
        assert fault not in {m.name for m in client.list_models(timeout=5)}
        assert client.forecast(SERIES, horizon=2, timeout=10).model == "tourism-ar"


def test_refusals_are_logged_once_however_often_model_dir_is_rescanned(faulty) -> None:
    srv, root, log = faulty
    before = [line for line in log.lines if line.startswith("refusing bundle")]
    time.sleep(0.5)  # five rescans
    assert [line for line in log.lines if line.startswith("refusing bundle")] == before
    # Every fault, the collision, the broken version and the empty folder: one line each.
    assert len(before) == len(FAULTS) + 3


def test_a_manifest_that_claims_another_folders_name_is_refused_and_the_rightful_one_serves(faulty) -> None:
    srv, root, log = faulty
    [line] = log.refusals(root / "tourism-ar-copy" / "1")
    assert "manifest.json names model 'tourism-ar' but its folder is 'tourism-ar-copy'" in line
    with SeqcastClient(srv.target) as client:
        served = {m.name: m.version for m in client.list_models(timeout=5)}
    assert served["tourism-ar"] == "1" and "tourism-ar-copy" not in served


def test_a_broken_highest_version_leaves_the_previous_good_one_serving(faulty) -> None:
    srv, root, log = faulty
    [line] = log.refusals(root / "fallback" / "2")
    assert "manifest.json is not UTF-8" in line
    with SeqcastClient(srv.target) as client:
        assert client.forecast(SERIES, horizon=2, model="fallback", timeout=10).model_version == "1"
        assert client.health("fallback", timeout=5) == "SERVING"


def test_non_numeric_version_folders_are_ignored_with_one_warning(faulty) -> None:
    srv, root, log = faulty
    assert [line for line in log.lines if "latest" in line] == [
        f"ignoring {root / 'tourism-ar' / 'latest'}: version folders are numbers (1, 2, ...)"
    ]
    with SeqcastClient(srv.target) as client:
        assert client.forecast(SERIES, horizon=2, timeout=10).model_version == "1"


def test_a_model_folder_without_versions_is_reported(faulty) -> None:
    srv, root, log = faulty
    assert log.refusals(root / "empty") == [f"refusing bundle {root / 'empty'}: no version folder (1, 2, ...) in it"]


def test_health_follows_the_models_that_serve_each_service_and_lists_them(faulty) -> None:
    srv, root, log = faulty
    with grpc.insecure_channel(srv.target) as channel:
        statuses = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5).statuses
    got = {name: s.status for name, s in statuses.items()}
    # Forecast models serve; the only translation bundle is refused (its tokenizer does not parse).
    assert {k: got[k] for k in ("", "seqcast.v1.Forecasting", "seqcast.v1.Translation", "seqcast.v1.Models",
                                "inference.GRPCInferenceService", "tourism-ar", "fallback", "tokenizer-unparsable")} == {
        "": SERVING, "seqcast.v1.Forecasting": SERVING, "seqcast.v1.Translation": NOT_SERVING, "seqcast.v1.Models": SERVING,
        "inference.GRPCInferenceService": SERVING, "tourism-ar": SERVING, "fallback": SERVING, "tokenizer-unparsable": NOT_SERVING,
    }
    assert {name for name, s in got.items() if s == NOT_SERVING} >= set(FAULTS)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_in_v1_and_v1alpha(faulty, version: str) -> None:
    srv, _, _ = faulty
    with grpc.insecure_channel(srv.target) as channel:
        info = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"grpc.reflection.{version}.ServerReflection")]
        listed, described = list(info(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"seqcast.v1.Translation", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert len(described.file_descriptor_response.file_descriptor_proto) == 1


def test_with_no_model_serving_health_says_not_serving(tmp_path: Path) -> None:
    clone(FORECAST, tmp_path, "tourism-ar")
    (tmp_path / "tourism-ar" / "1" / "manifest.json").write_bytes(b"\xff")
    srv = start_server(tmp_path, default_model="", default_forecast_model="", model_poll_seconds=0)
    try:
        with SeqcastClient(srv.target) as client:
            assert client.health(timeout=5) == "NOT_SERVING"
            assert client.health("seqcast.v1.Forecasting", timeout=5) == "NOT_SERVING"
            assert client.health("tourism-ar", timeout=5) == "NOT_SERVING"
            assert client.list_models(timeout=5) == []
    finally:
        srv.stop()


# --- the permission faults, as a non-root user ------------------------------------------------


def _unprivileged() -> list[str]:
    """The command prefix that runs a process as a user that file modes apply to."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing: no way to run the server as a user file modes apply to")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


# Fault: (what is made unreadable, relative to the clone's version folder; the refusal's words).
PERMISSION_FAULTS = {
    "unreadable-graph": ("encoder.onnx", "cannot read encoder.onnx: Permission denied"),
    "unreadable-manifest": ("manifest.json", "cannot read manifest.json: Permission denied"),
    "unreadable-version": (".", "cannot read manifest.json: Permission denied"),
    "unreadable-model": ("..", "cannot list the model folder: Permission denied"),
}


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[tuple[str, Path, list[str]]]:
    """`seqcast serve` as a non-root user over a model_dir holding each permission fault beside a
    good bundle: its address, the model_dir and the lines it wrote before listening."""
    prefix = _unprivileged()
    root = Path(tempfile.mkdtemp(prefix="seqcast-perm-"))  # not under root's 0700 pytest folder
    try:
        root.chmod(0o755)
        clone(FORECAST, root, "tourism-ar")
        for fault, (target, _) in PERMISSION_FAULTS.items():
            (clone(FORECAST, root, fault) / target).chmod(0)
        command = [*prefix, str(Path(sys.executable).with_name("seqcast")), "serve", "--model-dir", str(root),
                   "--port", "0", "--metrics-port", "0", "--default-forecast-model", "tourism-ar", "--model-poll-seconds", "0"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/")
        try:
            lines: list[str] = []
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if match := re.search(r"listening on (\S+)", line):
                    break
            assert match, "\n".join(lines)
            yield match.group(1), root, lines
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        for path in root.rglob("*"):  # give the modes back so the folder can be removed
            if not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(root)


@pytest.mark.parametrize("fault", PERMISSION_FAULTS)
def test_a_file_or_folder_the_server_cannot_read_is_refused_and_the_others_serve(unprivileged, fault: str) -> None:
    address, root, lines = unprivileged
    where = root / fault if fault == "unreadable-model" else root / fault / "1"
    refusals = [line for line in lines if f"refusing bundle {where}:" in line]
    assert len(refusals) == 1, lines
    assert PERMISSION_FAULTS[fault][1] in refusals[0]
    with SeqcastClient(address) as client:
        assert client.health(fault, timeout=5) == "NOT_SERVING"
        assert client.health(timeout=5) == "SERVING"
        assert client.forecast(SERIES, horizon=2, timeout=10).model == "tourism-ar"


# --- live updates -------------------------------------------------------------------------------


def add_version(root: Path, name: str, version: str) -> None:
    """Drops a new version in as a deployment should: written under a hidden name, then renamed."""
    staged = clone(TRANSLATION, root / ".staging", name, version)
    staged.rename(root / name / version)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def serving_version(srv: ServerThread, name: str) -> str | None:
    model = srv.running.registry.models.get(name)
    return None if model is None else model.manifest.version


def test_versions_change_under_load_and_every_accepted_request_completes(tmp_path: Path) -> None:
    """Streams and unary calls run without pause while version 2 is dropped in beside 1, 1 is
    removed, 3 replaces 2: every call answers OK, and each replaced version's decoding thread
    ends once its requests are done."""
    clone(TRANSLATION, tmp_path, "en-de")
    srv = start_server(tmp_path, default_model="en-de", default_forecast_model="", model_poll_seconds=0.1)
    stop, errors, versions, streamed = threading.Event(), [], set(), [0]

    def call(worker: int) -> None:
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.TranslationStub(channel)
            request = pb.TranslateRequest(texts=["Save changes", "Open the file"], max_new_tokens=12)
            while not stop.is_set():
                try:
                    if worker % 2:
                        chunks = list(stub.TranslateStream(request, timeout=30))
                        assert {c.finish_reason for c in chunks if c.finish_reason} <= {pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH}
                        streamed[0] += 1
                    else:
                        versions.add(stub.Translate(request, timeout=30).model_version)
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    errors.append(repr(e))

    workers = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    try:
        first = srv.running.registry.models["en-de"]
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        add_version(tmp_path, "en-de", "2")
        wait_for(lambda: serving_version(srv, "en-de") == "2", 60, "version 2 to serve")
        time.sleep(0.5)
        shutil.rmtree(tmp_path / "en-de" / "1")
        second = srv.running.registry.models["en-de"]
        add_version(tmp_path, "en-de", "3")
        wait_for(lambda: serving_version(srv, "en-de") == "3", 60, "version 3 to serve")
        shutil.rmtree(tmp_path / "en-de" / "2")
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    try:
        assert errors == []
        assert versions == {"1", "2", "3"} and streamed[0] > 0
        for retired in (first, second):
            retired.scheduler._thread.join(timeout=30)
            assert not retired.scheduler._thread.is_alive()
        with SeqcastClient(srv.target) as client:
            assert client.health("en-de", timeout=5) == "SERVING"
    finally:
        srv.stop()


def test_a_replaced_version_answers_the_requests_it_accepted_before_it_stops(tmp_path: Path) -> None:
    clone(TRANSLATION, tmp_path, "en-de")
    srv = start_server(tmp_path, default_model="en-de", default_forecast_model="", model_poll_seconds=0)
    try:
        old = srv.running.registry.models["en-de"]
        old.scheduler.hold()  # its requests wait in its queue until released
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.TranslationStub(channel)
            request = pb.TranslateRequest(texts=["Save changes"], max_new_tokens=8)
            waiting = stub.Translate.future(request, timeout=60)
            wait_for(lambda: old.scheduler.queued == 1, 30, "the request to queue on version 1")
            add_version(tmp_path, "en-de", "2")
            srv._call(srv.running.refresh())
            assert serving_version(srv, "en-de") == "2"
            assert stub.Translate(request, timeout=30).model_version == "2"  # new calls go to 2
            # A handler that looked version 1 up before the swap may submit to it a moment later.
            late = translation.prepare(old, ["Open file"], 4, srv.running.inference.settings, 30.0)
            assert len(srv._call(translation.translate(late))) == 1
            # Version 1 finishes what it accepted (closing lifts the hold), then stops.
            assert waiting.result(timeout=30).model_version == "1"
        old.scheduler._thread.join(timeout=30)
        assert not old.scheduler._thread.is_alive()
    finally:
        srv.stop()


def test_a_removed_model_stops_serving_and_its_health_says_so(tmp_path: Path) -> None:
    clone(FORECAST, tmp_path, "tourism-ar")
    clone(FORECAST, tmp_path, "other")
    srv = start_server(tmp_path, default_model="", default_forecast_model="", model_poll_seconds=0)
    try:
        with SeqcastClient(srv.target) as client:
            assert client.health("other", timeout=5) == "SERVING"
            shutil.rmtree(tmp_path / "other")
            srv._call(srv.running.refresh())
            assert client.health("other", timeout=5) == "NOT_SERVING"
            assert [m.name for m in client.list_models(timeout=5)] == ["tourism-ar"]
            shutil.rmtree(tmp_path / "tourism-ar")
            srv._call(srv.running.refresh())
            assert client.health(timeout=5) == "NOT_SERVING"
            assert client.health("seqcast.v1.Forecasting", timeout=5) == "NOT_SERVING"
    finally:
        srv.stop()


def test_a_refused_default_model_leaves_the_server_up_and_a_missing_one_is_a_settings_error(tmp_path: Path) -> None:
    clone(FORECAST, tmp_path, "tourism-ar")
    (clone(FORECAST, tmp_path, "broken") / "manifest.json").write_bytes(b"\xff")
    srv = start_server(tmp_path, default_model="", default_forecast_model="broken", model_poll_seconds=0)
    try:
        with SeqcastClient(srv.target) as client:
            with pytest.raises(SeqcastError) as err:
                client.forecast(SERIES, horizon=2, timeout=10)
            assert err.value.code == grpc.StatusCode.NOT_FOUND and "'broken' is not loaded" in err.value.message
            assert client.forecast(SERIES, horizon=2, model="tourism-ar", timeout=10).model == "tourism-ar"
    finally:
        srv.stop()
    with pytest.raises(StartupRefused, match="default forecast model 'nope' has no folder under"):
        start_server(tmp_path, default_model="", default_forecast_model="nope", model_poll_seconds=0)


def test_seqcast_serve_with_a_default_model_that_has_no_folder_exits_2_with_one_line(tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    clone(FORECAST, tmp_path, "tourism-ar")
    code = seqcast(["serve", "--model-dir", str(tmp_path), "--default-forecast-model", "nope", "--port", "0",
                    "--metrics-port", "0", "--model-poll-seconds", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: default forecast model 'nope' has no folder under {tmp_path} (models: tourism-ar)"
    assert not any("Traceback" in line for line in err)
