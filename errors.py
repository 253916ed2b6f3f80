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
