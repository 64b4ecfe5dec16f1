"""Errors meant for the person at the keyboard.

A `UserError` carries a message that already names the key, value or file that was wrong and what
would be right, so the command line prints it as one line (no traceback unless --debug). Anything
else is a bug in meshtrain and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a config key, a value, a file, a dataset. The message is the whole explanation."""


class ConfigError(UserError):
    """An experiment config that cannot be resolved to a valid ExperimentConfig."""


class DataError(UserError):
    """A dataset or tokenizer that cannot be found, prepared or read."""
