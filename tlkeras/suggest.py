"""'Did you mean' hints for unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Returns "; did you mean 'x'?" for the closest choice, or "" when none is close.

    Example:
    >>> did_you_mean("resnet5", ["resnet50", "vgg16"])
    "; did you mean 'resnet50'?"
    """
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:
        lowered = name.lower()
        close = [c for c in choices if lowered in c.lower()][:1]
    return f"; did you mean '{close[0]}'?" if close else ""
