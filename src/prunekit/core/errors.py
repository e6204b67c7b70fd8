"""Errors that reach the user as one line: what is wrong and how to fix it.

UsageError means bad input (exit code 2); PrunekitError a runtime failure (exit code 1); Interrupted a run stopped
by SIGINT (exit 130) or SIGTERM (exit 143). This module imports nothing heavy: the CLI's error path uses it.
"""

import errno
import signal


class PrunekitError(Exception):
    exit_code = 1


class UsageError(PrunekitError):
    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run stops where it is (a KeyboardInterrupt, so `except Exception` cleanup that would
    delete resumable work does not run); notes added on the way out say what was kept."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


DISK_FULL_FIX = "free disk space (or write somewhere else) and run again"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
