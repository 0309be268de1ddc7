"""Who runs a PID: the operating system's view, through psutil (portable).

nvidia-smi prints PIDs; whether that PID is the same process here is checked against its name,
since a PID from another PID namespace (a container) or a recording may name an unrelated process.
"""

from __future__ import annotations

import contextlib
import ntpath
import posixpath
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

import psutil

from gpuwarden.records import GpuProcess, Snapshot

# Why a process's user is not shown. Windows lets an account read the owner of its own processes
# only; other accounts' need gpuwarden to run as an administrator, or as a service under LocalSystem.
DENIED = ("Windows denies it for other accounts' processes: run gpuwarden as an administrator (or as a"
          " service under LocalSystem) to see it" if sys.platform == "win32"
          else "the operating system denies it to gpuwarden's account")
NOT_HERE = ("no process of that name has this PID here (it ended, or runs in another container or VM"
            " guest, or this is a recording)")


@dataclass(frozen=True)
class ProcessOwner:
    """Who runs a PID: the account's name, or None and why not."""

    user: str | None
    unknown_reason: str | None = None


class ProcessLookup(Protocol):
    """Who runs a PID, as the OS tells it (never a guess: a PID the OS shows as another program
    gets no user)."""

    def user_of(self, pid: int, smi_name: str) -> ProcessOwner: ...


def _basename(name: str) -> str:
    name = name.strip().lstrip(".").strip()
    return posixpath.basename(ntpath.basename(name)).lower()


def names_match(smi_name: str, candidates: Iterable[str]) -> bool:
    """Does nvidia-smi's (possibly truncated) name plausibly name this process?"""
    wanted = _basename(smi_name)
    if not wanted or smi_name.strip().lower() == "insufficient permissions":
        return True  # nothing to check against
    for candidate in candidates:
        have = _basename(candidate)
        if not have:
            continue
        if have == wanted or have.startswith(wanted) or wanted.startswith(have) or wanted.endswith(have):
            return True
    return False


class PsutilLookup:
    """The real lookup. Every call tolerates processes that vanish or deny access."""

    def user_of(self, pid: int, smi_name: str) -> ProcessOwner:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                candidates = [process.name()]
                with contextlib.suppress(psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    candidates.append(process.exe())
                try:
                    cmdline = process.cmdline()
                    if cmdline:
                        candidates.append(cmdline[0])
                except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    pass
                if not names_match(smi_name, candidates):
                    return ProcessOwner(None, NOT_HERE)
                return ProcessOwner(process.username())
        except psutil.AccessDenied:
            return ProcessOwner(None, DENIED)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return ProcessOwner(None, NOT_HERE)
        except (psutil.Error, OSError, ValueError) as error:
            return ProcessOwner(None, f"the operating system could not tell ({type(error).__name__})")


def with_users(processes: Iterable[GpuProcess], lookup: ProcessLookup) -> tuple[GpuProcess, ...]:
    """The processes with ``user`` filled in where the OS shows the same process here."""
    cache: dict[tuple[int, str], ProcessOwner] = {}
    result = []
    for process in processes:
        key = (process.pid, process.name)
        if key not in cache:
            cache[key] = lookup.user_of(process.pid, process.name)
        owner = cache[key]
        result.append(replace(process, user=owner.user, user_unknown=None if owner.user else owner.unknown_reason))
    return tuple(result)


def snapshot_with_users(snapshot: Snapshot, lookup: ProcessLookup) -> Snapshot:
    """Every process of a snapshot taken on this machine, with its user."""
    return replace(
        snapshot,
        processes=with_users(snapshot.processes, lookup),
        unassigned_processes=with_users(snapshot.unassigned_processes, lookup),
    )


def os_account() -> str | None:
    """The OS account this process runs as, asked of the OS (the process token on Windows, the real
    uid on POSIX), never of environment variables such as USER that anyone can set."""
    try:
        return psutil.Process().username() or None
    except (psutil.Error, OSError, KeyError):
        return None
