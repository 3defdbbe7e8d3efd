"""Set-up on a fresh clone (issue 18, items 5 and 11): what ``make`` does to the tree.

The real Makefile runs with a stand-in Python (``PYTHON=...``) whose ``venv`` and ``pip`` take a
second and record what they do: enough to see two set-ups overlap, without installing anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[1]

FAKE_PYTHON = """\
#!/bin/sh
# stand-in for `python3 -m venv DIR`: a venv whose pip records its calls and notices overlap
[ "$1" = "-m" ] && [ "$2" = "venv" ] || exit 2
mkdir -p "$3/bin"
cat > "$3/bin/pip" <<'PIP'
#!/bin/sh
log="$(dirname "$0")/../../pip.log"
if ! mkdir "$(dirname "$0")/../../busy" 2>/dev/null; then echo OVERLAP >> "$log"; fi
sleep 1
echo "pip $*" >> "$log"
rmdir "$(dirname "$0")/../../busy" 2>/dev/null
exit 0
PIP
chmod +x "$3/bin/pip"
"""


def test_two_set_ups_at_once_install_once(tmp_path):
    if shutil.which("flock") is None:
        raise AssertionError("flock (util-linux) is needed by the Makefile's set-up lock")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    cmd = ["make", "-C", str(tmp_path), "install", f"PYTHON={fake}", "VENV=venv"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    outs = [p.communicate(timeout=60)[0].decode() for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    log = (tmp_path / "pip.log").read_text().splitlines()
    assert "OVERLAP" not in log, log
    assert log == ["pip install --quiet --upgrade pip", "pip install --quiet -e .[dev]"], log
    assert (tmp_path / "venv" / ".installed").exists()
    # and again, nothing to do
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0
    assert len((tmp_path / "pip.log").read_text().splitlines()) == 2


def test_bench_writes_to_ignored_dirs_by_default():
    code = textwrap.dedent("""
        from benchmarks.config import CACHE_DIR, OUT_DIR
        print(OUT_DIR); print(CACHE_DIR)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAISSX_BENCH")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )
    out_dir, cache_dir = (Path(line) for line in out.stdout.split())
    # results go to a folder git ignores: the published benchmarks/results stay as they are
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(out_dir / "latest.json")], cwd=ROOT, timeout=30
    )
    assert ignored.returncode == 0, f"{out_dir} is not ignored by git"
    assert out_dir != ROOT / "benchmarks" / "results"
    # the ~170 MB cache (the original package's venv) lives outside the clone
    assert ROOT not in cache_dir.parents, cache_dir
    make = subprocess.run(
        ["make", "-n", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "HOME": "/home/someone", "XDG_CACHE_HOME": ""},
        timeout=60,
    )
    assert "--out benchmarks/out --cache /home/someone/.cache/faissx-bench" in make.stdout
