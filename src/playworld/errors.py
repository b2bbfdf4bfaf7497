"""Error types. Each message names the file or value at fault and what is wrong with it."""


class PlayworldError(Exception):
    """Base of every error playworld raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(PlayworldError, ValueError):
    """A configuration value, key or file is wrong."""


class DatasetError(PlayworldError):
    """A dataset directory, shard, manifest or input video is missing, corrupt or inconsistent."""


class CheckpointError(PlayworldError):
    """A checkpoint is missing, corrupt, or does not match the model/config it is loaded into."""


class TrainingError(PlayworldError):
    """Training cannot go on (for example a NaN/inf loss); the last good checkpoint is kept."""


class PlayworldWarning(UserWarning):
    """Base of playworld's warnings (the CLI prints these as ``playworld: warning: ...``)."""


class UnverifiedWeightsWarning(PlayworldWarning):
    """Release weights whose ``config.json`` records no sha256 (written before playworld recorded them)."""


class UnfinishedRunWarning(PlayworldWarning):
    """Release weights of a run that has not reached its ``train.steps`` (interrupted, or still training)."""
