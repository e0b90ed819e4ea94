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


class ModelOutOfMemory(MemoryError):
    """The model did not fit in memory with this batch on this device; a smaller batch may."""

    code = "out_of_memory"


# torch raises a plain RuntimeError (c10::Error) when the CPU allocator fails, e.g. under the
# sandbox's RLIMIT_AS; its text is the only mark. CUDA raises torch.OutOfMemoryError.
_CPU_ALLOCATOR_FAILURE = "DefaultCPUAllocator: can't allocate memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure raised by Python, the CPU allocator or CUDA."""
    import torch

    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and _CPU_ALLOCATOR_FAILURE in str(exc)


CODED_ERRORS = (InputError, ModelOutOfMemory)  # what the sandbox child reports with the error's own code
