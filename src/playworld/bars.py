"""Progress bars that suit where they are written: live on a terminal, about a line a minute in a log
file (a bar redrawn ten times a second fills a `nohup` log with carriage returns)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)``, redrawn every 0.1 s when it writes to a terminal and at most once a minute
    otherwise, unless ``mininterval`` is given."""
    stream = kwargs.get("file") or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    kwargs.setdefault("mininterval", 0.1 if tty else 60.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(*args, **kwargs)
