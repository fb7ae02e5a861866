"""User-facing errors.

Anything a user can cause (a wrong name, path, shape or format) raises
:class:`DiffnasError` with one line that says what was wrong and what is
accepted. The command line turns it into ``error: ...`` and exit status 2,
never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class DiffnasError(Exception):
    """An error caused by user input; its message is one complete sentence."""


def unknown(kind: str, name: str, valid: Iterable[str]) -> DiffnasError:
    """Build the standard error for an unknown name of some ``kind``."""
    return DiffnasError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
