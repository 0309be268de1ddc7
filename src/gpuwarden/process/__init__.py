"""Where model processes live: one small interface (:class:`ProcessHost`), the real host
(:mod:`gpuwarden.process.host`), the launcher every model runs under (:mod:`gpuwarden.process.shim`),
the launcher's exit record (:mod:`gpuwarden.process.exitrecord`) and an in-memory fake for tests
(:mod:`gpuwarden.process.fake`), as httpx ships ``MockTransport`` beside its transports.

This module imports nothing heavy: the launcher starts with it, once per model.
"""

from gpuwarden.process.base import Launched, LaunchError, ProcessHost
from gpuwarden.process.exitrecord import ExitRecord

__all__ = ["ExitRecord", "LaunchError", "Launched", "ProcessHost"]
