"""TLS and mutual TLS on the API port, from certificate files; plaintext health for probes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from conftest import REPO, ServerThread, start_server
from certs import CertificateAuthority, Pem
from seqcast.client import SeqcastClient, SeqcastError, Tls
from seqcast.client.cli import main as client_cli
from seqcast.server.settings import ServerSettings

MODELS = REPO / "models"
SERIES = [[float(10 + (i % 4) * 3 + i * 0.1) for i in range(24)]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(root, "seqcast-ca"), CertificateAuthority(root, "other-ca")
    return {"ca": ca.pem, "server": ca.issue("server", server=True), "client": ca.issue("client", server=False),
            "stranger": other.issue("stranger", server=False), "other_ca": other.pem}


def _serve(pki: dict, **tls: object) -> ServerThread:
    server: Pem = pki["server"]
    return start_server(MODELS, default_model="en-de", default_forecast_model="tourism", health_port=0,
                        tls_cert_file=server.cert, tls_key_file=server.key, **tls)


@pytest.fixture(scope="module")
def tls_server(pki: dict) -> Iterator[ServerThread]:
    srv = _serve(pki)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: dict) -> Iterator[ServerThread]:
    srv = _serve(pki, tls_client_ca_file=pki["ca"].cert)
    yield srv
    srv.stop()


def _forecast_model(target: str, tls: Tls | None) -> str:
    with SeqcastClient(target, tls=tls) as client:
        return client.forecast(SERIES, horizon=2, timeout=10).model


def _refused(target: str, tls: Tls | None) -> SeqcastError:
    with SeqcastClient(target, tls=tls) as client, pytest.raises(SeqcastError) as caught:
        client.forecast(SERIES, horizon=2, timeout=5)
    return caught.value


def test_tls_client_trusting_the_ca_is_served(tls_server: ServerThread, pki: dict) -> None:
    assert _forecast_model(tls_server.target, Tls(ca_file=pki["ca"].cert)) == "tourism"
    # By name as well as by address: the certificate holds both.
    target = f"localhost:{tls_server.running.port}"
    assert _forecast_model(target, Tls(ca_file=pki["ca"].cert)) == "tourism"


def test_tls_client_without_the_ca_fails_the_handshake(tls_server: ServerThread, pki: dict) -> None:
    assert _refused(tls_server.target, Tls()).code == grpc.StatusCode.UNAVAILABLE  # system roots
    assert _refused(tls_server.target, Tls(ca_file=pki["other_ca"].cert)).code == grpc.StatusCode.UNAVAILABLE
    assert _refused(tls_server.target, None).code == grpc.StatusCode.UNAVAILABLE  # plaintext


def test_mtls_client_with_a_certificate_from_the_ca_is_served(mtls_server: ServerThread, pki: dict) -> None:
    client: Pem = pki["client"]
    tls = Tls(ca_file=pki["ca"].cert, cert_file=client.cert, key_file=client.key)
    assert _forecast_model(mtls_server.target, tls) == "tourism"


def test_mtls_refuses_a_client_without_a_certificate(mtls_server: ServerThread, pki: dict) -> None:
    assert _refused(mtls_server.target, Tls(ca_file=pki["ca"].cert)).code == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(mtls_server: ServerThread, pki: dict) -> None:
    stranger: Pem = pki["stranger"]
    tls = Tls(ca_file=pki["ca"].cert, cert_file=stranger.cert, key_file=stranger.key)
    assert _refused(mtls_server.target, tls).code == grpc.StatusCode.UNAVAILABLE


def test_health_port_answers_plaintext_probes_and_nothing_else(mtls_server: ServerThread) -> None:
    target = f"127.0.0.1:{mtls_server.running.health_port}"
    with SeqcastClient(target) as client:
        assert client.health(timeout=5) == "SERVING"
        assert client.health("seqcast.v1.Translation", timeout=5) == "SERVING"
        with pytest.raises(SeqcastError) as caught:
            client.forecast(SERIES, horizon=2, timeout=5)
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_client_cli_speaks_mtls(mtls_server: ServerThread, pki: dict, capsys: pytest.CaptureFixture[str]) -> None:
    client: Pem = pki["client"]
    args = ["--target", mtls_server.target, "--ca-file", str(pki["ca"].cert), "--cert-file", str(client.cert),
            "--key-file", str(client.key), "--timeout", "10"]
    assert client_cli([*args, "health"]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert client_cli([*args[:4], "health"]) == 1  # the CA but no client certificate
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_client_refuses_incomplete_tls_arguments(pki: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client: Pem = pki["client"]
    for flags, message in ((["--cert-file", str(client.cert)], "needs both cert_file and key_file"),
                           (["--ca-file", str(tmp_path / "missing.crt")], "is not a file")):
        with pytest.raises(SystemExit) as exit_:
            client_cli(["--target", "127.0.0.1:1", *flags, "health"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a file"):
        Tls(ca_file=tmp_path / "missing.crt")


def test_tls_settings_must_be_complete(pki: dict, tmp_path: Path) -> None:
    server: Pem = pki["server"]
    with pytest.raises(ValidationError, match="set both or neither"):
        ServerSettings(model_dir=MODELS, tls_cert_file=server.cert)
    with pytest.raises(ValidationError, match="needs tls_cert_file"):
        ServerSettings(model_dir=MODELS, tls_client_ca_file=pki["ca"].cert)
    with pytest.raises(ValidationError, match="is not a file"):
        ServerSettings(model_dir=MODELS, tls_cert_file=tmp_path / "missing.crt", tls_key_file=server.key)


def test_a_key_that_is_not_the_certificates_is_refused_naming_both_files_before_any_model_loads(pki: dict) -> None:
    server, client = pki["server"], pki["client"]
    with pytest.raises(ValidationError, match="are not a usable pair") as err:
        ServerSettings(model_dir=MODELS, tls_cert_file=server.cert, tls_key_file=client.key)
    assert str(server.cert) in str(err.value) and str(client.key) in str(err.value)
    out = subprocess.run(
        [Path(sys.executable).with_name("seqcast"), "serve", "--model-dir", str(MODELS), "--port", "0", "--metrics-port", "0",
         "--tls-cert-file", str(server.cert), "--tls-key-file", str(client.key)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert f"tls_key_file {client.key} and tls_cert_file {server.cert} are not a usable pair" in out.stderr
    assert "serving" not in out.stderr  # no model was loaded first
