"""The Lua scripts ship inside the wheel and load from there."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from distributed_opossum._redis.scripts import SCRIPT_NAMES, script_source

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from distributed_opossum._redis import scripts as _scripts
where = Path(str(_scripts._lua_dir())).resolve()
assert where == Path(sys.argv[1], "distributed_opossum", "_redis", "lua").resolve(), where
for name in _scripts.SCRIPT_NAMES:
    sys.stdout.write(_scripts.script_source(name) + "\\0")
"""


def test_wheel_carries_and_loads_the_scripts(tmp_path: Path) -> None:
    """Built as a wheel, the package loads its scripts from distributed_opossum/_redis/lua."""
    wheel_builder = pytest.importorskip("hatchling.builders.wheel")
    [wheel] = wheel_builder.WheelBuilder(str(ROOT)).build(
        directory=str(tmp_path / "dist"), versions=["standard"]
    )
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (*SCRIPT_NAMES, "_prelude"):
        assert f"distributed_opossum/_redis/lua/{name}.lua" in names
    assert not [n for n in names if n.startswith("lua/")]

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # -I: neither the working directory nor PYTHONPATH can lead back to the
    # source tree, so the scripts must come from the unpacked wheel.
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHECK, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\0")[:-1] == [script_source(n) for n in SCRIPT_NAMES]
