"""
The project's user-error types. A UserError is a mistake the user can fix (a bad value, a missing file,
an impossible shape): the command-line scripts print it as one sentence and exit with status 2, without a
traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; its message says what was wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A bad setting (config file, --key=value, model configuration)."""


class CheckpointError(UserError):
    """A checkpoint or model path that cannot be used."""


class Stopped(Exception):
    """Training stopped by a signal after saving its checkpoint. Scripts exit with 128 + the signal number
    (143 for SIGTERM, 130 for SIGINT), so a scheduler can tell an interrupted run from a finished one."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
