"""One exception hierarchy for the whole package.

Every error a user can cause (bad config, bad input file, unreachable server)
derives from VglpipeError and carries a message that names the offending input.
"""


class VglpipeError(Exception):
    """Base class of all errors raised on purpose by vglpipe."""


class ConfigError(VglpipeError):
    """The workflow configuration is invalid (message names the key)."""


class InputError(VglpipeError):
    """An input file or record is unusable (message names the file or record)."""


class RegionError(InputError):
    """A region boundary is missing, empty or not a (multi)polygon."""


class RasterError(InputError):
    """A raster cannot be read, or holds no usable pixels."""


class SourceError(VglpipeError):
    """A remote source (Mapillary, orthophoto server) failed for good."""


class AuthError(SourceError):
    """The source rejected our credentials; retrying will not help."""


class ResumeError(VglpipeError):
    """A checkpoint exists but was written with a different configuration."""


class ChecksumError(InputError):
    """Stored bytes do not match the checksum recorded for them (the message names where)."""
