"""Errors of the command line that are not input-file errors."""


class UsageError(ValueError):
    """A command-line argument is wrong; the message says which and what to do."""
