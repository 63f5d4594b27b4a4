"""User-facing errors.

A :class:`ZhloraError` is a problem with the user's input or environment (a bad file, a
missing download, a wrong flag). The CLI prints its message as one paragraph and exits
with status 2, with no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZhloraError(Exception):
    """An error the user can fix; the message says what is wrong and what to do."""


class ConfigError(ZhloraError, ValueError):
    """A bad configuration value; the message names the flag or YAML key."""


class DataError(ZhloraError):
    """Bad or missing input data; the message names the file (and line or column)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> ZhloraError:
    """Build the error for an unknown registry name, listing the known ones."""
    choices = sorted(choices)
    return ZhloraError(
        f'Unknown {kind} "{name}".{did_you_mean(name, choices)} Known {kind}s: {", ".join(choices)}.'
    )
