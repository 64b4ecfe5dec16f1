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


# The exit code of a process that ends because a peer died or hung (it cannot wait for an orderly
# shutdown; see PeerFailure).
PEER_FAILURE_EXIT = 4


class PeerFailure(UserError):
    """Another process of a multi-process run died or hung. The command line ends this one at once
    (os._exit, after its one line): jax's orderly shutdown would wait on the lost peer at a barrier
    and then abort with a core dump."""
