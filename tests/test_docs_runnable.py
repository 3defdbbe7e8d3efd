"""The documentation's runnable examples run, so the docs cannot drift from the code.

A fenced block in README.md or docs/*.md preceded by a marker comment is executed:

* ``<!-- runnable -->`` before a ``python`` block: run in a fresh interpreter (local mode).
* ``<!-- runnable: serve -->`` before a ``bash`` block holding a ``.venv/bin/faissx serve ...``
  line: that very command is started (on a free loopback port) as the server of the file's
  remote blocks.
* ``<!-- runnable: remote -->`` before a ``python`` block: run against that server, with the
  documented ``tcp://localhost:45678`` pointed at it.

Each block runs on its own, as a reader would paste it. Blocks without a marker are fragments
(they use names defined elsewhere) and are not run.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ServerProcess, server_env

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTED_SERVER = "tcp://localhost:45678"
MARKER = re.compile(r"^<!-- runnable(?::\s*(\w+))? -->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    kind: str  # "local", "serve" or "remote"
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    """The marked blocks of one Markdown file, in order."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        marker = MARKER.match(line)
        if not marker:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = FENCE.match(lines[j]) if j < len(lines) else None
        if fence is None:
            raise AssertionError(f"{path.name}:{i + 1}: a runnable marker not followed by a fence")
        end = next(k for k in range(j + 1, len(lines)) if lines[k].startswith("```"))
        yield Block(
            path,
            j + 1,
            marker.group(1) or "local",
            fence.group(1),
            "\n".join(lines[j + 1 : end]) + "\n",
        )


ALL = [b for path in DOCS for b in blocks(path)]


def test_the_quick_starts_are_marked_runnable():
    readme = [b for b in ALL if b.path.name == "README.md"]
    assert [b.kind for b in readme[:3]] == ["local", "serve", "remote"], readme
    for block in ALL:
        assert block.kind in ("local", "serve", "remote"), block.id
        assert block.lang == ("bash" if block.kind == "serve" else "python"), block.id


def serve_args(block: Block) -> list[str]:
    """The documented ``faissx serve`` command's options."""
    for line in block.code.splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == [".venv/bin/faissx", "serve"]:
            return words[2:]
    raise AssertionError(f"{block.id}: no `.venv/bin/faissx serve` line")


@pytest.fixture(scope="module")
def doc_servers() -> Iterator[dict[Path, ServerProcess]]:
    """The server each file's serve block starts (started when its block is reached)."""
    started: dict[Path, ServerProcess] = {}
    yield started
    for proc in started.values():
        proc.stop()


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_runnable_block(block: Block, doc_servers, tmp_path):
    if block.kind == "serve":
        args = serve_args(block)
        assert "--port" not in args and "--bind-address" not in args, block.id
        doc_servers[block.path] = ServerProcess(*args).start()
        return
    code = block.code
    if block.kind == "remote":
        server = doc_servers.get(block.path)
        assert server is not None, f"{block.id}: no runnable serve block before it"
        assert DOCUMENTED_SERVER in code, block.id
        code = code.replace(DOCUMENTED_SERVER, server.endpoint)
    out = run_python(code, tmp_path)
    assert out.returncode == 0, f"{block.id} failed:\n{block.code}\n{out.stderr[-3000:]}"
