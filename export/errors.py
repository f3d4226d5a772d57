"""The export's one error type: CLIs print it as one line and exit non-zero."""
from __future__ import annotations

from apclip.cli_common import UsageError
from apclip.errors import ApclipError


class ExportError(ApclipError):
    """An export that cannot go on (bad options, unusable checkpoint, failed parity): nothing is kept."""


class ExportUsageError(ExportError, UsageError):
    """Options out of range or in conflict: an ExportError that exits 2 like every usage error."""
