"""A fake downstream service whose health the test flips for every pod process at once.

The switch is one byte in a small file that every process maps into memory
(``mmap``): the test writes it, each pod reads it on every call. A read costs
a memory access, needs no Redis and no round trip, and every process sees a
flip at the same instant.

Example::

    switch = DownstreamSwitch.create(tmp_path / "downstream")
    switch.fail()          # every pod's calls now raise helpers.Boom
    switch.heal()          # they succeed again

    # in a pod process:
    switch = DownstreamSwitch.open(path)
    if switch.failing: ...
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Literal

__all__ = ["DownstreamMode", "DownstreamSwitch"]

DownstreamMode = Literal["ok", "fail"]
_BYTES: dict[DownstreamMode, bytes] = {"ok": b"0", "fail": b"1"}


class DownstreamSwitch:
    """The shared health flag of the fake downstream (``"ok"`` or ``"fail"``)."""

    def __init__(self, path: Path, memory: mmap.mmap) -> None:
        self.path = path
        self._memory = memory

    @classmethod
    def create(cls, path: Path, mode: DownstreamMode = "ok") -> DownstreamSwitch:
        """Make the switch file (healthy by default) and map it."""
        path.write_bytes(_BYTES[mode])
        return cls.open(path)

    @classmethod
    def open(cls, path: Path) -> DownstreamSwitch:
        """Map an existing switch file."""
        with path.open("r+b") as file:
            memory = mmap.mmap(file.fileno(), 1)
        return cls(path, memory)

    @property
    def mode(self) -> DownstreamMode:
        """What the downstream does now."""
        return "fail" if self._memory[0:1] == b"1" else "ok"

    @property
    def failing(self) -> bool:
        """True while calls should fail."""
        return self._memory[0] == 0x31

    def set(self, mode: DownstreamMode) -> None:
        """Make every process's downstream ``mode`` from now on."""
        self._memory[0:1] = _BYTES[mode]

    def fail(self) -> None:
        """Every call fails from now on."""
        self.set("fail")

    def heal(self) -> None:
        """Every call succeeds from now on."""
        self.set("ok")

    def close(self) -> None:
        """Unmap the file."""
        self._memory.close()
