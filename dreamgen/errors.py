"""User-facing errors: the CLI prints their message on one line and exits with their ``exit_code``.

2: bad usage or input (config, prompt, files, weights); 1: a runtime failure (NaN, a full disk); 128 + N: stopped by
signal N (130 Ctrl-C, 143 SIGTERM) after saving what can be resumed.
"""


class DreamgenError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""

    exit_code = 2


class ConfigError(DreamgenError):
    """Unknown key, unknown component name or invalid value in a config."""


class GuidanceLoadError(DreamgenError):
    """A guidance model could not be loaded (missing folder, no network, wrong layout, unsafe weights)."""


class PromptError(DreamgenError):
    """A prompt the guidance cannot encode (empty, or words outside a closed vocabulary)."""


class CheckpointError(DreamgenError):
    """A checkpoint that is missing, damaged, or does not belong to the run's config."""


class RunFailure(DreamgenError):
    """The job itself failed while running (not the input's fault as far as can be told)."""

    exit_code = 1


class NonFiniteError(RunFailure):
    """The optimisation produced NaN or Inf."""


class Interrupted(DreamgenError):
    """SIGINT/SIGTERM stopped a job at a clean point; the message says how to continue."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
