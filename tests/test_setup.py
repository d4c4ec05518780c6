"""The two top commands and the setup behind them: `make demo` and `make serve` answer through a
real server and print client commands that work as written in a new shell; the test tools come
from the project's own directories; the setup installs nothing system-wide.

The `make` tests run the Makefile's own recipes on the environment `make test` set up (.venv);
elsewhere (another environment, or .venv out of date) they skip rather than install.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".tools" / "bin"
VENV_BIN = REPO / ".venv" / "bin"
# Files that make up the setup (`make serve`, `make test`, CI).
SETUP_FILES = [REPO / "Makefile", REPO / ".ci" / "run", REPO / "scripts" / "install-deploy-tools.sh"]


def fresh_shell_env() -> dict[str, str]:
    """What a new login shell has: no virtual environment, the system's PATH only."""
    # Also no make variables of the `make test` that may be running these tests.
    dropped = {"VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("SEQCAST_")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


@pytest.fixture(scope="module")
def make() -> list[str]:
    """`make` in the repository, with .venv already set up for `make serve`."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if Path(sys.executable).parent != VENV_BIN:
        pytest.skip(f"the tests run in {sys.prefix}, not the Makefile's .venv")
    if subprocess.run(["make", "-q", ".venv/.runtime"], cwd=REPO, capture_output=True, env=fresh_shell_env()).returncode != 0:
        pytest.skip(".venv/.runtime is out of date (run `make serve` or `make test` once)")
    return ["make", "-s", "-C", str(REPO), "PORT=0", "METRICS_PORT=0"]


# -- make demo, make serve -------------------------------------------------------------------

def test_make_demo_translates_and_forecasts_then_stops(make: list[str]) -> None:
    out = subprocess.run([*make, "demo"], capture_output=True, text=True, timeout=180, env=fresh_shell_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "translate (unary):" in out.stdout and "-> " in out.stdout
    assert re.search(r"forecast \(tourism, next 4 quarters", out.stdout), out.stdout[-2000:]


def _lines(stream: object) -> queue.Queue[str | None]:
    """The lines of a text stream, read on a thread (None at its end), so a test can wait with a timeout."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.fixture(scope="module")
def serving(make: list[str]) -> Iterator[tuple[list[str], str]]:
    """`make serve` running; yields the client commands it printed (the lines after "From another
    shell:" up to a blank line) and the server's own `try:` hint."""
    server = subprocess.Popen([*make, "serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=fresh_shell_env(), start_new_session=True)
    try:
        lines, seen, hints, server_hint = _lines(server.stdout), [], None, ""
        while True:
            line = lines.get(timeout=120)
            if line is None:
                pytest.fail("make serve exited:\n" + "".join(seen[-40:]))
            seen.append(line)
            if line.strip().startswith("try: "):
                server_hint = line.strip().removeprefix("try: ")
            if "From another shell:" in line:
                hints = []
            elif hints is not None and line.strip():
                hints.append(line.strip())
            elif hints is not None:
                break
        assert server_hint, "the server printed no try: hint"
        yield hints, server_hint
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make, demo.py and the server: as Ctrl-C would
        server.wait(timeout=60)


def test_make_serve_prints_client_commands_for_every_call(serving: tuple[list[str], str]) -> None:
    serving, _ = serving
    calls = [re.sub(r"^.*?--target \S+ ", "", hint).split()[0] for hint in serving]
    assert calls == ["translate", "translate", "forecast", "forecast", "models"], serving
    assert any("--plot" in hint for hint in serving)


def test_make_serves_hints_work_as_written_in_a_new_shell(serving: tuple[list[str], str], tmp_path: Path) -> None:
    hints, server_hint = serving
    # Another directory, no activated environment, the system's PATH: what a new terminal has.
    for hint in [*hints, server_hint]:
        out = subprocess.run(["bash", "-c", hint], cwd=tmp_path, env=fresh_shell_env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, f"{hint}\n{out.stdout}{out.stderr}"
        assert out.stdout.strip(), hint
    # `make serve`'s environment has the plot extra.
    assert (tmp_path / "forecast.png").read_bytes().startswith(b"\x89PNG")


# -- The test tools and what the setup touches -------------------------------------------------

@pytest.mark.parametrize("tool", ["promtool", "prometheus"])
def test_prometheus_tools_come_from_the_projects_tools_directory(tool: str) -> None:
    if not (TOOLS_BIN / tool).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{TOOLS_BIN / tool} is missing: `make test` runs scripts/install-deploy-tools.sh")
        pytest.skip(f"{TOOLS_BIN / tool} is missing (bash scripts/install-deploy-tools.sh .venv)")
    # tests/conftest.py puts .tools/bin first, so a system-wide copy is never the one tested.
    assert shutil.which(tool) == str(TOOLS_BIN / tool)
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "version" in out.stdout + out.stderr


@pytest.mark.parametrize("path", SETUP_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_setup_installs_nothing_system_wide(path: Path) -> None:
    # Debian's packages are downloaded and unpacked, never installed: installing prometheus would
    # enable its system service. No sudo, no global npm or user-site pip installs either.
    forbidden = [r"apt-get\s+(-\S+\s+)*install", r"apt\s+install", r"dpkg\s+(-\S+\s+)*-i\b", r"\bsudo\b",
                 r"systemctl\s+(enable|start)", r"npm\s+(install|i)\s+(-g|--global)", r"pip\S*\s+install\s+--user"]
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    for pattern in forbidden:
        assert not re.search(pattern, text), f"{path.name}: {pattern}"


def test_ci_checks_the_prometheus_service_is_unchanged() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    before, make_test, after = ci.index("before=\"$(service_state)\""), ci.index("\nmake test\n"), ci.index("after=\"$(service_state)\"")
    assert before < make_test < after
    assert "systemctl is-enabled prometheus" in ci
