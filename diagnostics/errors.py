"""Errors the engine raises for input the user must fix (never for our own bugs)."""


class InputError(ValueError):
    """Unusable input: the message says what is wrong and what to do."""

    code = "invalid_input"


class UnsafeArchiveError(InputError):
    """An archive holds an entry that would run code when loaded; it was not loaded."""

    code = "unsafe_archive"


class ExportUnsupportedError(InputError):
    """torch.export could not trace the model; the message names the alternatives."""

    code = "export_unsupported"
