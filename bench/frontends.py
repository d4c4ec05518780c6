"""Front-end overhead: the same translation requests through the native gRPC API, the KServe v2
gRPC front end (tritonclient) and the HTTP/JSON front end (LibreTranslate /translate), at 1 and
16 concurrent clients, against one `seqcast serve` process on the en-de bundle.

Every request is one sentence from a fixed list, greedy, with the model's default limits (the
HTTP API has no token limit to set), so each front end asks for exactly the same work; the
tokens each sentence decodes to are counted once through the native API. Each client is a
thread with its own connection, sending its next request when the last one is answered, for
`--duration` seconds. Every cell runs `--rounds` times, the front ends taking turns within a
round (a noisy neighbour slows all alike); the table shows medians over rounds of tokens/s and
of p50 and p99 latency.

    python bench/frontends.py --duration 5 --rounds 3 --concurrency 1 16

This process imports tritonclient, so it must not import seqcast.server (both define the
protobuf package `inference`); the server runs as its own process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as triton

from seqcast.client import SeqcastClient

from served import committed_models, serve

SENTENCES = [  # long enough for about 30 tokens each, so decoding dominates as in real use
    "Open the file in a new window, check the changes you made and save them before you close the program.",
    "The changes could not be saved because the disk is full; delete some files and try again later.",
    "Select the users you want to remove from the group and click the button at the bottom of the page.",
    "Your password must contain at least eight characters, one number and one letter in upper case.",
    "Do you want to replace the existing file with the new version, or keep both files in the folder?",
    "The connection to the server was lost while the data was being sent, so please check your network settings.",
    "Click here to download the latest version of the application and read the notes about this release.",
    "No results were found for your search, so try different words or remove some of the filters.",
]
FRONT_ENDS = ("native", "kserve", "http")


def serve_en_de(threads: int) -> tuple[subprocess.Popen, str, int]:
    """`seqcast serve` on en-de with the HTTP front end on; returns the process, gRPC address and HTTP port."""
    proc, address, startup = serve(committed_models("en-de"), "--http-port", "0", "--intra-op-threads", str(threads))
    match = re.search(r"HTTP/JSON: http://[^:]+:(\d+)/", startup)
    assert match is not None, startup
    return proc, address, int(match.group(1))


Caller = tuple[Callable[[str], str], Callable[[], None]]  # (translate one text, close the connection)


def native_caller(address: str) -> Caller:
    client = SeqcastClient(address)
    return (lambda text: client.translate([text])[0].text), client.close


def kserve_caller(address: str) -> Caller:
    client = triton.InferenceServerClient(address)

    def call(text: str) -> str:
        tensor = triton.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
        return client.infer("en-de", [tensor]).as_numpy("translation")[0].decode()

    return call, client.close


def http_caller(port: int) -> Caller:
    connection = http.client.HTTPConnection("127.0.0.1", port)  # keep-alive, as a real client would

    def call(text: str) -> str:
        body = json.dumps({"q": text, "source": "en", "target": "de"})
        connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        reply = json.loads(response.read())
        assert response.status == 200, reply
        return reply["translatedText"]

    return call, connection.close


@dataclass(frozen=True)
class Cell:
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int


def run_cell(make: Callable[[], Caller], concurrency: int, duration: float, tokens: dict[str, int],
             expected: dict[str, str]) -> Cell:
    """`concurrency` closed-loop clients for `duration` seconds; every answer is checked."""
    made = [make() for _ in range(concurrency)]
    callers = [call for call, _ in made]
    for call in callers:  # connect and warm each connection outside the clock
        call(SENTENCES[0])
    latencies: list[list[float]] = [[] for _ in callers]
    done_tokens = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        call, k = callers[i], i
        start.wait()
        while time.perf_counter() < stop_at[0]:
            text = SENTENCES[k % len(SENTENCES)]
            t0 = time.perf_counter()
            answer = call(text)
            latencies[i].append(time.perf_counter() - t0)
            assert answer == expected[text], (text, answer, expected[text])
            done_tokens[i] += tokens[text]
            k += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + duration
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    for _, close in made:
        close()
    all_latencies = np.array([x for per in latencies for x in per]) * 1000
    return Cell(sum(done_tokens) / elapsed, float(np.percentile(all_latencies, 50)), float(np.percentile(all_latencies, 99)),
                len(all_latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=1, help="the server's intra-op threads")
    args = parser.parse_args()
    command = "python bench/frontends.py " + " ".join(sys.argv[1:])
    proc, address, port = serve_en_de(args.threads)
    try:
        with SeqcastClient(address) as client:
            results = client.translate(SENTENCES)
        expected = {s: r.text for s, r in zip(SENTENCES, results)}
        tokens = {s: r.output_tokens for s, r in zip(SENTENCES, results)}
        makers = {"native": lambda: native_caller(address), "kserve": lambda: kserve_caller(address),
                  "http": lambda: http_caller(port)}
        cells: dict[tuple[str, int], list[Cell]] = {}
        for r in range(args.rounds):
            order = FRONT_ENDS[r % 3:] + FRONT_ENDS[: r % 3]
            for concurrency in args.concurrency:
                for front in order:
                    cell = run_cell(makers[front], concurrency, args.duration, tokens, expected)
                    cells.setdefault((front, concurrency), []).append(cell)
                    print(f"round {r + 1} {front:6} c={concurrency:<3} {cell.tokens_per_s:8.1f} tok/s  "
                          f"p50 {cell.p50_ms:7.1f} ms  p99 {cell.p99_ms:7.1f} ms  ({cell.requests} requests)", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores; "
          f"{statistics.mean(tokens.values()):.1f} tokens per request; `{command}`\n")
    print("| front end | clients | tokens/s | vs native | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        base = statistics.median(c.tokens_per_s for c in cells[("native", concurrency)])
        for front in FRONT_ENDS:
            runs = cells[(front, concurrency)]
            tps = statistics.median(c.tokens_per_s for c in runs)
            print(f"| {front} | {concurrency} | {tps:.0f} | {tps / base:.2f} | {statistics.median(c.p50_ms for c in runs):.1f} | "
                  f"{statistics.median(c.p99_ms for c in runs):.1f} |")


if __name__ == "__main__":
    main()
