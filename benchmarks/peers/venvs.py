"""One virtualenv per peer system, from ``requirements/<system>.txt`` (pinned versions).

``python -m benchmarks.peers.venvs [system ...]`` builds the missing or outdated ones (a marker
holds the requirements file's hash) and prints, for any that fails, pip's last lines: the
benchmark then reports that system as not installed with that error, and runs the rest.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

from benchmarks.peers.systems import HERE, SYSTEMS, VENVS
from benchmarks.procs import clean_env

REQUIREMENTS = HERE / "requirements"


def needed() -> list[str]:
    """The virtualenvs the systems use (FAISSx and local faiss use this repository's)."""
    return sorted({s.venv for s in SYSTEMS.values() if s.venv is not None})


def ensure(name: str, log: object = print) -> str | None:
    """Build ``.venvs/<name>`` if needed; None when ready, else the error."""
    req = REQUIREMENTS / f"{name}.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()[:16]
    venv = VENVS / name
    marker = venv / f".installed-{digest}"
    if marker.exists():
        return None
    if venv.exists():
        shutil.rmtree(venv)
    log(f"installing {name} into {venv} ...")
    python = venv / "bin" / "python"
    for step in (
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(req),
        ],
    ):
        done = subprocess.run(
            step, capture_output=True, text=True, timeout=1800, env=clean_env(isolated=True)
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-4:]
            return f"{' '.join(step[:5])} failed: {' / '.join(tail)}"
    marker.touch()
    return None


def main(argv: list[str]) -> int:
    names = argv or needed()
    failed = {name: err for name in names if (err := ensure(name)) is not None}
    for name, err in failed.items():
        print(f"{name}: NOT INSTALLED: {err}")
    return 0  # a peer that does not install is reported by the benchmark, not fatal


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
