"""The edge ``gpuwarden service`` acts through: run ``systemctl`` / ``schtasks`` (found on PATH
only) and write or remove the unit file. :class:`FakeServiceSystem` records instead, for tests.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gpuwarden.executables import find_on_path
from gpuwarden.service.plan import Step

COMMAND_TIMEOUT_SECONDS = 60
NOT_FOUND = 127


@dataclass(frozen=True)
class StepResult:
    step: Step
    code: int
    output: str


class ServiceSystem(Protocol):
    def carry_out(self, step: Step) -> StepResult: ...


class LocalServiceSystem:
    """The real one."""

    def carry_out(self, step: Step) -> StepResult:
        if step.argv:
            return self._run(step)
        assert step.path is not None
        path = Path(step.path)
        try:
            if step.text is None:
                path.unlink(missing_ok=True)
                return StepResult(step, 0, f"removed {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(step.text, encoding=step.encoding)
        except OSError as error:
            return StepResult(step, 1, f"cannot write {path}: {error.strerror or error}")
        return StepResult(step, 0, f"wrote {path}")

    def _run(self, step: Step) -> StepResult:
        program = find_on_path(step.argv[0], os.environ.get("PATH"))
        if program is None:
            return StepResult(step, NOT_FOUND, f"{step.argv[0]} not found on PATH")
        try:
            done = subprocess.run([str(program), *step.argv[1:]], capture_output=True, timeout=COMMAND_TIMEOUT_SECONDS,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return StepResult(step, 1, f"{step.argv[0]} did not finish within {COMMAND_TIMEOUT_SECONDS} s")
        except OSError as error:
            return StepResult(step, 1, f"cannot run {program}: {error.strerror or error}")
        output = (done.stdout + done.stderr).decode(console_encoding(), errors="replace").strip()
        return StepResult(step, done.returncode, output)


def console_encoding() -> str:
    """What console programs write: the OEM code page on Windows (schtasks), UTF-8 elsewhere."""
    get_oem_code_page = getattr(getattr(ctypes, "windll", None), "kernel32", None)
    if get_oem_code_page is None:
        return "utf-8"
    encoding = f"cp{get_oem_code_page.GetOEMCP()}"
    try:
        codecs.lookup(encoding)
    except LookupError:
        return "utf-8"
    return encoding


@dataclass
class FakeServiceSystem:
    """Records each step; ``answer`` decides a command's exit code and output (default: 0, "")."""

    answer: Callable[[Step], tuple[int, str]] = lambda step: (0, "")
    done: list[Step] = field(default_factory=list)

    def carry_out(self, step: Step) -> StepResult:
        self.done.append(step)
        code, output = self.answer(step) if step.argv else (0, "")
        return StepResult(step, code, output)


def carry_out(system: ServiceSystem, steps: Sequence[Step]) -> list[StepResult]:
    """Each step in turn, stopping at the first that fails (unless it may)."""
    results = []
    for step in steps:
        result = system.carry_out(step)
        results.append(result)
        if result.code != 0 and not step.may_fail:
            break
    return results
