"""User-facing errors.

Every problem a user can cause (bad input file, unknown preset, missing weights, corrupt
bitstream) is raised as a :class:`DivinrError` whose message is one line naming the problem
and the fix. The CLI and the experiment runner print it and exit with status 2 instead of
showing a traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class DivinrError(Exception):
    """An error caused by input or environment, with a one-line actionable message."""


class VideoFormatError(DivinrError):
    """The input video cannot be read as requested."""


class PresetError(DivinrError):
    """An unknown preset or an invalid configuration value."""


class MissingWeightsError(DivinrError):
    """Model or metric weights are not available locally."""


class BitstreamError(DivinrError):
    """A bitstream is corrupt, truncated, of another version or for another backbone."""


def unknown_choice(kind: str, name: str, choices: "list[str] | tuple[str, ...]") -> PresetError:
    """Build the error for a name that is not in a registry."""
    return PresetError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}")
