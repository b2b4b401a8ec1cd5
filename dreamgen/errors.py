"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class DreamgenError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class ConfigError(DreamgenError):
    """Unknown key, unknown component name or invalid value in a config."""


class GuidanceLoadError(DreamgenError):
    """A guidance model could not be loaded (missing folder, no network, wrong layout)."""


class PromptError(DreamgenError):
    """A prompt the guidance cannot encode (empty, or words outside a closed vocabulary)."""


class NonFiniteError(DreamgenError):
    """The optimisation produced NaN or Inf."""
