"""The exception hierarchy of lo2-stream.

Library code raises these (never ``SystemExit``); entry points turn them into exit codes and clear
messages.  Each names the thing, the value and what was expected.
"""

from __future__ import annotations


class Lo2Error(Exception):
    """Base class of every error lo2-stream raises on purpose."""


class ConfigError(Lo2Error):
    """A setting or flag has a value that cannot work."""


class DataLayoutError(Lo2Error):
    """A folder is not an LO2 run layout we know (v1 ``light-oauth2-data-<epoch>`` or v2 ``LO2_run_<epoch>``)."""


class PayloadError(Lo2Error):
    """An input record cannot be used; ``reason`` is a short machine-readable code for metrics/DLQ."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelLoadError(Lo2Error):
    """A model bundle is missing, corrupt (checksum), or incompatible with this code."""


class BrokerError(Lo2Error):
    """The Kafka broker cannot be fetched, started, reached or stopped."""
