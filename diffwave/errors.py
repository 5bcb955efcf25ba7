"""User-facing errors.

Everything a user can cause (a bad config, a schedule out of range, a missing file) raises a
`DiffwaveError` subclass carrying one clear sentence; the CLI prints it without a traceback and exits 2.
Programming errors stay ordinary exceptions so that they keep their tracebacks.
"""


class DiffwaveError(Exception):
    """Base class of errors that the user can fix; the message is one self-contained sentence."""


class ConfigError(DiffwaveError):
    """A config file, preset name or `key=value` override is invalid."""


class ScheduleError(DiffwaveError):
    """A noise schedule or reverse schedule is invalid or outside the training schedule's range."""


class AudioError(DiffwaveError):
    """An audio file is missing, unreadable, corrupt, empty, silent or otherwise unusable.

    `problem` is the short category ("truncated WAV", "empty", ...) that preprocess reports count.
    """

    def __init__(self, message: str, problem: str = "unusable audio") -> None:
        super().__init__(message)
        self.problem = problem


class DataError(DiffwaveError):
    """A corpus, its metadata or a preprocessed feature folder is missing, malformed or inconsistent."""


class TrainingError(DiffwaveError):
    """Training cannot go on: diverged (non-finite losses), too little data, or a run folder conflict."""


class CheckpointError(DiffwaveError):
    """A checkpoint is missing, unsafe, corrupt or from another config."""


class VocodeError(DiffwaveError):
    """An input the vocoder cannot use: wrong mel shape or range, unconditional checkpoint, ..."""


class MissingExtraError(DiffwaveError, ImportError):
    """An optional package that a metric needs is not installed (the CLI prints the install hint)."""
