"""The command line's own error."""

__all__ = ["CLIError"]


class CLIError(Exception):
    """A problem with the command line or a config file: reported as ``mimir-fast: error: ...``."""
