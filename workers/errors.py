"""Errors a person fixes (a wrong setting, a missing path, a service down), not bugs.

The CLI prints their message as one line and exits 1; they never come with a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something outside the code is wrong; the message says what and what to do."""

    exit_code = 1


class BadArgumentError(UserError):
    """The command was given something it cannot use (exit 2, like a usage error)."""

    exit_code = 2


class DatabaseUnavailableError(UserError):
    pass


class BrokerUnavailableError(UserError):
    pass


class JobNotFoundError(UserError, LookupError):
    pass


class NoIndexError(UserError):
    """A read-only command was pointed at a data dir that holds no index."""
