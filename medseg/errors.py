"""medseg's error hierarchy.

Every error a user can cause is a `MedsegError`. The CLI prints its message as one line on stderr
and exits with code 1 (`--debug` shows the traceback). Messages say what was found, what was
expected and how to fix it, and never contain patient-identifying values.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base of all errors caused by input, configuration or environment, not by a bug."""


class InputError(MedsegError):
    """An input file or folder is missing, unreadable or not what was expected."""


class DicomError(InputError):
    """A DICOM folder or file cannot be turned into one regular volume."""


class SeriesSelectionError(DicomError):
    """A folder holds several image series and none was chosen with --series."""


class GeometryError(MedsegError):
    """Two volumes that must share a voxel grid do not, or a grid is irregular."""


class ConfigError(MedsegError):
    """A configuration file, preset, plan or option value is invalid."""


class BundleError(MedsegError):
    """A model bundle is missing, incomplete or incompatible with the input."""


class OutputError(MedsegError):
    """An output cannot be written where it was asked to go."""


def first_validation_problem(exc) -> str:
    """"field 'a.b': <message>" for the first problem of a pydantic ValidationError, for one-line errors."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"field '{where}': {first['msg']}"
