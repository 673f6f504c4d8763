"""The multi-pod demo (the README's first command) runs on its embedded Redis."""

from __future__ import annotations

import pytest

from distributed_opossum import demo


async def test_demo_opens_every_pod_and_closes_them_after_the_outage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Three pods on fakeredis: all open during the outage, one trial closes them all."""
    await demo.run(None, pods=3, duration=4.0, quorum=None)
    out = capsys.readouterr().out
    for pod in ("pod-0", "pod-1", "pod-2"):
        assert f"{pod} open" in out
        assert f"{pod} close" in out
    assert "done:" in out
