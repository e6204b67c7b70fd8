"""Errors that reach the user as one line: what is wrong and how to fix it.

UsageError means bad input (exit code 2); PrunekitError a runtime failure (exit code 1).
"""


class PrunekitError(Exception):
    exit_code = 1


class UsageError(PrunekitError):
    exit_code = 2
