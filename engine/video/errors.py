"""Errors and warnings of the video ingest (sources, sampling, preprocessing)."""
from __future__ import annotations

from apclip.errors import ApclipError


class SourceError(ApclipError):
    """A video source that cannot be opened or read: the message names the source."""


class NoFramesError(SourceError):
    """A source that opened but produced no decodable frame (or too few for what was asked)."""


class SourceWarning(UserWarning):
    """Frames that could not be decoded, or a frame count that the decoder contradicted."""
