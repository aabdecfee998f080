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


class InvalidParameter(ValueError):
    """A component (model, dataset, ...) refuses one of its own parameters; the builder names its config key."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        super().__init__(f"{name}={value!r} is invalid: {expected}")
        self.name, self.value, self.expected = name, value, expected


def require(ok: bool, name: str, value: object, expected: str) -> None:
    """Raise :class:`InvalidParameter` for parameter ``name`` unless ``ok``; ``expected`` says what it must be."""
    if not ok:
        raise InvalidParameter(name, value, expected)
