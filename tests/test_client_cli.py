"""The client library and `seqcast-client` against a scripted in-process server.

The fake server is a real `grpc.server` on 127.0.0.1 (port 0) with tiny servicers: a "translation"
upper-cases the text, one word per token, and the stream interleaves indices so that later texts
finish first. The real server's behaviour is tested elsewhere; here only the client is.
"""

import io
import json
import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from seqcast.client import SeqcastClient, SeqcastError, Translation, TranslationChunk
from seqcast.client.cli import main
from seqcast.v1 import seqcast_pb2, seqcast_pb2_grpc

MODEL = "tiny-en-de"
EOS, LENGTH = seqcast_pb2.FINISH_REASON_EOS, seqcast_pb2.FINISH_REASON_LENGTH


def _script(request: seqcast_pb2.TranslateRequest, context: grpc.ServicerContext) -> list[list[str]]:
    """Validates like the real server, then returns each text's output pieces (one per token)."""
    if request.model not in ("", MODEL):
        context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not loaded")
    for i, text in enumerate(request.texts):
        if not text:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"texts[{i}] is empty; every text needs a character")
    limit = request.max_new_tokens if request.HasField("max_new_tokens") else 100
    words = [text.upper().split()[:limit] for text in request.texts]
    return [[w if j == 0 else " " + w for j, w in enumerate(ws)] for ws in words]


def _finish(request: seqcast_pb2.TranslateRequest, pieces: list[str]) -> int:
    return LENGTH if request.HasField("max_new_tokens") and len(pieces) == request.max_new_tokens else EOS


class FakeTranslation(seqcast_pb2_grpc.TranslationServicer):
    def __init__(self) -> None:
        self.requests: list[seqcast_pb2.TranslateRequest] = []

    def Translate(self, request, context):
        self.requests.append(request)
        results = [
            seqcast_pb2.TranslationResult(
                text="".join(p), finish_reason=_finish(request, p), input_tokens=len(t.split()) + 1, output_tokens=len(p)
            )
            for t, p in zip(request.texts, _script(request, context))
        ]
        return seqcast_pb2.TranslateResponse(model=MODEL, model_version="1", results=results)

    def TranslateStream(self, request, context) -> Iterator[seqcast_pb2.TranslateChunk]:
        self.requests.append(request)
        pieces = _script(request, context)
        # Round-robin from the last index, so text 0 finishes last and the client must buffer.
        for step in range(max(map(len, pieces))):
            for i in reversed(range(len(pieces))):
                if step < len(pieces[i]):
                    last = step == len(pieces[i]) - 1
                    yield seqcast_pb2.TranslateChunk(
                        index=i,
                        text=pieces[i][step],
                        finish_reason=_finish(request, pieces[i]) if last else 0,
                        input_tokens=len(request.texts[i].split()) + 1,
                        output_tokens=step + 1,
                    )


class FakeModels(seqcast_pb2_grpc.ModelsServicer):
    def ListModels(self, request, context):
        models = [
            seqcast_pb2.ModelInfo(
                name=MODEL, version="1", task="translation", architecture="transformer",
                execution_provider="CPUExecutionProvider", max_source_tokens=128, max_new_tokens=64,
                metadata={"source_language": "en", "target_language": "de"},
            ),
            seqcast_pb2.ModelInfo(
                name="tiny-gru", version="2", task="translation", architecture="gru-attention",
                execution_provider="CUDAExecutionProvider", max_source_tokens=256, max_new_tokens=96,
            ),
        ]
        return seqcast_pb2.ListModelsResponse(models=models, default_translation_model=MODEL)


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, FakeTranslation]]:
    """(target, translation servicer) of a running fake server."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    translation = FakeTranslation()
    seqcast_pb2_grpc.add_TranslationServicer_to_server(translation, server)
    seqcast_pb2_grpc.add_ModelsServicer_to_server(FakeModels(), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("seqcast.v1.Translation", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", translation
    server.stop(grace=None)


@pytest.fixture
def target(fake: tuple[str, FakeTranslation]) -> str:
    return fake[0]


TEXTS = ["good morning", "the cat sat on the mat", "hi"]
EXPECTED = "GOOD MORNING\nTHE CAT SAT ON THE MAT\nHI\n"


# --- the library ---


def test_translate_returns_plain_records(fake: tuple[str, FakeTranslation]) -> None:
    target, translation = fake
    with SeqcastClient(target) as client:
        client.wait_ready(timeout=5)
        assert client.translate("good morning") == [Translation("GOOD MORNING", "eos", 3, 2)]
        assert not translation.requests[-1].HasField("max_new_tokens")  # unset means model maximum
        assert client.translate(TEXTS, model=MODEL, max_new_tokens=2)[1] == Translation("THE CAT", "length", 7, 2)
        assert translation.requests[-1].max_new_tokens == 2


def test_stream_pieces_join_to_the_unary_result(target: str) -> None:
    with SeqcastClient(target) as client:
        chunks = list(client.translate_stream(TEXTS))
        unary = client.translate(TEXTS)
    assert chunks[0] == TranslationChunk(2, "HI", "eos", 2, 1)
    assert [c.finish_reason for c in chunks if c.index == 1] == [None] * 5 + ["eos"]
    for i, result in enumerate(unary):
        assert "".join(c.text for c in chunks if c.index == i) == result.text


def test_errors_carry_the_status_code(target: str) -> None:
    with SeqcastClient(target) as client:
        with pytest.raises(SeqcastError) as error:
            client.translate(["fine", ""])
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert str(error.value) == "INVALID_ARGUMENT: texts[1] is empty; every text needs a character"
        with pytest.raises(SeqcastError, match="NOT_FOUND: model 'nope'"):
            list(client.translate_stream(["hello"], model="nope"))


def test_list_models_and_health(target: str) -> None:
    with SeqcastClient(target) as client:
        models = client.list_models()
        assert [(m.name, m.is_default) for m in models] == [(MODEL, True), ("tiny-gru", False)]
        assert models[0].metadata == {"source_language": "en", "target_language": "de"}
        assert client.health() == "SERVING"
        assert client.health("seqcast.v1.Translation") == "NOT_SERVING"


# --- the command line ---


def test_translate_prints_one_line_per_text(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", target, "translate", *TEXTS]) == 0
    assert capsys.readouterr().out == EXPECTED


def test_stream_prints_the_same_lines_in_request_order(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", target, "translate", "--stream", *TEXTS]) == 0
    assert capsys.readouterr().out == EXPECTED
    assert main(["--target", target, "translate", "--stream", "--max-new-tokens", "3", *TEXTS]) == 0
    assert capsys.readouterr().out == "GOOD MORNING\nTHE CAT SAT\nHI\n"


def test_json_lists_the_results(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", target, "translate", "--json", "--max-new-tokens", "1", "good morning"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"text": "GOOD", "finish_reason": "length", "input_tokens": 3, "output_tokens": 1}
    ]
    # With --stream, JSON Lines: one object per chunk as it arrives.
    assert main(["--target", target, "translate", "--stream", "--json", "good morning"]) == 0
    chunks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(c["index"], c["text"], c["finish_reason"]) for c in chunks] == [(0, "GOOD", None), (0, " MORNING", "eos")]


def test_dash_reads_texts_from_stdin(
    target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n\n"))
    assert main(["--target", target, "translate", "-"]) == 0
    assert capsys.readouterr().out == EXPECTED


def test_target_defaults_to_the_environment(
    target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEQCAST_TARGET", target)
    assert main(["health"]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert main(["health", "seqcast.v1.Translation"]) == 1
    assert capsys.readouterr().out == "NOT_SERVING\n"


def test_server_error_exits_1_with_code_and_message(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", target, "translate", "fine", ""]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: INVALID_ARGUMENT: texts[1] is empty; every text needs a character\n"
    assert main(["--target", target, "translate", "--stream", "--model", "nope", "hello"]) == 1
    assert capsys.readouterr().err == "error: NOT_FOUND: model 'nope' is not loaded\n"


def test_unreachable_server_names_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--target", f"127.0.0.1:{port}", "--timeout", "5", "translate", "hello"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach a seqcast server at 127.0.0.1:{port} (UNAVAILABLE: ")
    assert "make serve" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["translate", "--max-new-tokens", "0", "hello"])
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_models_prints_a_table(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", target, "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "TASK", "ARCHITECTURE", "PROVIDER", "MAX", "SOURCE", "MAX", "NEW"]
    assert lines[1].split() == [MODEL, "*", "1", "translation", "transformer", "CPUExecutionProvider", "128", "64"]
    assert lines[2].split() == ["tiny-gru", "2", "translation", "gru-attention", "CUDAExecutionProvider", "256", "96"]
    assert lines[3] == "* default translation model"
