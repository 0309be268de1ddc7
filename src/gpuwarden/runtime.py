"""The settings users change while gpuwarden runs (the dashboard, ``PUT /api/settings``), with their
bounds: one immutable value, saved in the state database and swapped in whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol, TypeGuard


class Configured(Protocol):
    """What the run-time settings start from (the configuration's Settings)."""

    @property
    def memory_threshold_mib(self) -> int: ...

    @property
    def refresh_interval_seconds(self) -> int: ...

# The settings users may change at run time (dashboard, PUT /api/settings), with their bounds.
RUNTIME_SETTING_RANGES: dict[str, tuple[int, int]] = {
    "memory_threshold_mib": (0, 10_000_000),
    "refresh_interval_seconds": (1, 86_400),
}


def runtime_setting_in_range(value: object, key: str) -> TypeGuard[int]:
    """Is ``value`` a valid value for the run-time setting ``key``?"""
    low, high = RUNTIME_SETTING_RANGES[key]
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class RuntimeSettings:
    """The settings users change while gpuwarden runs (dashboard, ``PUT /api/settings``), saved in
    the state database. One immutable value: a change builds a new one, swapped in whole."""

    memory_threshold_mib: int
    refresh_interval_seconds: int

    @classmethod
    def from_settings(cls, settings: Configured) -> RuntimeSettings:
        """The run-time settings' starting values, from the configuration."""
        return cls(settings.memory_threshold_mib, settings.refresh_interval_seconds)

    def updated(self, values: Mapping[str, object]) -> RuntimeSettings:
        """These settings with the valid ``values`` applied; unknown keys and values out of range
        (from an untrusted database, say) are ignored: see :meth:`invalid` to refuse them instead."""
        valid = {key: value for key, value in values.items()
                 if isinstance(value, int) and not self.invalid({key: value})}
        return replace(self, **valid)

    @staticmethod
    def invalid(values: Mapping[str, object]) -> list[str]:
        """A sentence for each key that is unknown or whose value is out of its range."""
        problems = []
        for key, value in values.items():
            if key not in RUNTIME_SETTING_RANGES:
                problems.append(f"unknown run-time setting {key[:40]!r}")
            elif not runtime_setting_in_range(value, key):
                low, high = RUNTIME_SETTING_RANGES[key]
                problems.append(f"{key} must be a whole number from {low} to {high}")
        return problems

    def to_dict(self) -> dict[str, int]:
        return {"memory_threshold_mib": self.memory_threshold_mib,
                "refresh_interval_seconds": self.refresh_interval_seconds}
