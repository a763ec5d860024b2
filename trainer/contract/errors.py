"""The error both sides derive from, and how a message is printed on one line."""

from __future__ import annotations


class KubetrainError(Exception):
    """A failure with a message for the user; each command's `main()` prints it on one line."""


def one_line(message: str) -> str:
    """The message with control and line-break characters escaped: errors echo user input."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(message))
