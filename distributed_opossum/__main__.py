"""``python -m distributed_opossum …``: the operator CLI (see :mod:`distributed_opossum.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
