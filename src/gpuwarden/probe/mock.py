"""Mock mode: recorded nvidia-smi output from a file (or several) or a string, read through the
very same parsing and classification code as the real command's output."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from gpuwarden.probe.assemble import build_snapshot, failed_snapshot
from gpuwarden.probe.parse import NvidiaSmiParseError, parse_output
from gpuwarden.records import Snapshot

MAX_MOCK_BYTES = 16 * 1024 * 1024


class MockSource:
    """Replays recorded output. ``paths`` are re-read on every snapshot, so a test (or a person)
    can change the file while gpuwarden runs and see the change at the next refresh."""

    def __init__(
        self,
        *,
        text: str | None = None,
        paths: Sequence[Path] = (),
        columns: Sequence[str] | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        if text is None and not paths:
            raise ValueError("MockSource needs text or paths")
        self._text = text
        self._paths = tuple(paths)
        self._columns = tuple(columns) if columns else None
        self._clock = clock

    @classmethod
    def from_setting(cls, value: Path, columns: Sequence[str] | None, clock: Callable[[], datetime]) -> MockSource:
        """``mock_smi`` may join several files with the OS path separator (``;`` on Windows)."""
        paths = [Path(part) for part in str(value).split(os.pathsep) if part]
        return cls(paths=paths, columns=columns, clock=clock)

    @property
    def description(self) -> str:
        if self._text is not None:
            return "mock (text)"
        return "mock " + os.pathsep.join(str(p) for p in self._paths)

    def _texts(self) -> list[str]:
        if self._text is not None:
            return [self._text]
        texts = []
        for path in self._paths:
            with path.open("rb") as handle:
                data = handle.read(MAX_MOCK_BYTES + 1)
            if len(data) > MAX_MOCK_BYTES:
                raise NvidiaSmiParseError(f"mock file {path} is larger than {MAX_MOCK_BYTES} bytes")
            texts.append(data.decode("utf-8", errors="replace"))
        return texts

    def snapshot(self) -> Snapshot:
        now = self._clock()
        try:
            outputs = [parse_output(text, self._columns) for text in self._texts()]
        except OSError as error:
            return failed_snapshot(now, self.description, f"cannot read mock nvidia-smi output: {error}")
        except NvidiaSmiParseError as error:
            return failed_snapshot(now, self.description, f"cannot parse mock nvidia-smi output: {error}")
        return build_snapshot(outputs, now, self.description)
