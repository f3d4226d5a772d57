"""Exceptions shared across apclip; CLIs print them as one line and exit non-zero."""
from __future__ import annotations


class ApclipError(Exception):
    """An error a user can act on: the message names the input and what to do."""


class CheckpointError(ApclipError):
    """A checkpoint that cannot be loaded (format, missing weights, refused pickle, bad shapes)."""


class MissingExtraError(ApclipError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""
