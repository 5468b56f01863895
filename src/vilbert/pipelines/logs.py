"""How a pipeline says what it decided (a preset fitted to a store, weights loaded): a callable
taking one line. The CLI prints to stderr; the demo writes into the stage's log."""

from __future__ import annotations

import sys
from typing import Callable

Log = Callable[[str], None]


def stderr_log(prefix: str) -> Log:
    """A Log printing `prefix: message` to stderr."""

    def log(message: str) -> None:
        print(f"{prefix}: {message}", file=sys.stderr)

    return log
