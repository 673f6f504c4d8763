"""Child processes that get Ctrl-C as they would in a terminal."""

from __future__ import annotations

import signal

__all__ = ["ctrl_c_as_in_a_terminal"]


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` of a child process: SIGINT handled by default, as in a terminal.

    A test run started in the background (``nohup``, ``cmd &``, some CI runners)
    passes SIGINT on ignored, and Python then leaves an ignored SIGINT alone: the
    Ctrl-C a test sends would never arrive, and the test would only measure how
    the suite was launched.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
