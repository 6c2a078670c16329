"""Errors that reach users: one line each, naming the file or field and what to change.

The CLI maps `UserError` to exit code 2 and prints only its message (no traceback); the gateway maps
it to a 4xx JSON error.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from a user (a file, a flag, a request). `str(err)` is the one-line message."""

    exit_code = 2


class SpecError(UserError):
    """A spec, manifest or scenario that does not validate."""


class ProfileError(UserError):
    """A profile lookup outside the measured range, or a profile file that is malformed."""
