"""The one exception hierarchy of slimfx.

Every error a user can meet derives from :class:`SlimfxError`. Messages say what
went wrong, where (node name, op, the user's source line) and what to do.
"""

from __future__ import annotations

__all__ = [
    "SlimfxError",
    "TraceError",
    "UnsupportedOpError",
    "VerifyError",
    "AttrError",
    "ParseError",
    "PassError",
    "PipelineError",
    "LoweringError",
    "CalibrationError",
    "QuantizationError",
    "PruningError",
    "ArtifactError",
    "RuntimeInputError",
    "DeviceError",
]


class SlimfxError(Exception):
    """Base class of every error slimfx raises on purpose."""


class TraceError(SlimfxError):
    """A model could not be turned into slimfx IR."""


class UnsupportedOpError(SlimfxError):
    """An op has no definition or lowering where one is needed."""


class VerifyError(SlimfxError):
    """The IR broke one of its invariants."""


class AttrError(VerifyError, TypeError):
    """An op attribute is missing, unknown, of the wrong kind or nested too deep.

    Also a :class:`TypeError`, which is what attribute errors were before this class.
    """


class ParseError(SlimfxError):
    """The text form of a graph could not be read."""


class PassError(SlimfxError):
    """A pass failed, or its preconditions were not met."""


class PipelineError(SlimfxError):
    """A pipeline string or pass name is malformed or unknown."""


class LoweringError(SlimfxError):
    """A graph could not be lowered to a backend."""


class CalibrationError(SlimfxError):
    """Calibration data or statistics are unusable."""


class QuantizationError(SlimfxError):
    """A quantization configuration or conversion is invalid."""


class PruningError(SlimfxError):
    """A pruning request is invalid or cannot be applied."""


class ArtifactError(SlimfxError):
    """A saved artifact is corrupt, foreign or from another version."""


class RuntimeInputError(SlimfxError):
    """Inputs given to a compiled model do not match its signature."""


class DeviceError(SlimfxError):
    """A compiled model could not be built for or run on its device (qemu, RPC, GPU)."""
