"""The errors aeexp reports to a user as one clear line (no traceback)."""


class AeexpError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(AeexpError):
    """A config value is invalid; the message names the key."""


class DataError(AeexpError):
    """A dataset cannot be found or read; the message names the files."""


class TrackingError(AeexpError):
    """The MLflow tracking store cannot be reached or written."""


class TrainingError(AeexpError):
    """Training cannot go on (e.g. the loss became NaN); the message says which setting to look at."""
