"""How the project installs: the server runs without torch; no generic top-level modules."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120)


def test_the_server_and_the_client_import_and_parse_flags_without_torch() -> None:
    out = _python(
        "from seqcast.server.cli import build_parser\n"
        "import seqcast.server.app, seqcast.client\n"
        "args = build_parser().parse_args(['serve', '--port', '0'])\n"
        "print(args.command)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "serve"


def test_training_without_the_extras_says_what_to_install() -> None:
    out = _python("from seqcast.server.cli import main\nraise SystemExit(main(['export', '--run-dir', 'x', '--name', 'y']))")
    assert out.returncode == 2
    assert "needs the training extras" in out.stderr and "pip install -e '.[train]'" in out.stderr


def test_no_generic_top_level_modules_are_installed(tmp_path) -> None:
    for name in ("server", "clients", "export", "protos"):
        # Outside the repository, so the working directory does not shadow the installed package.
        out = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=tmp_path)
        assert f"No module named '{name}'" in out.stderr
