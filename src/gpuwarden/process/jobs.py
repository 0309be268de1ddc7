"""Windows job objects: each model's process tree held as one, so an unload stops all of it, even the
grandchildren whose parent has already exited (a walk of the process tree cannot reach those).

The launcher (:mod:`gpuwarden.process.shim`) creates a job named after its load, starts the model
suspended, puts it in the job and resumes it: everything the model starts is in the job too, and
cannot leave it (the job allows no breakaway). The job has no kill-on-close: models outlive the
launcher and gpuwarden alike. The launcher keeps the job's handle until the job is empty, and the
model holds one too, so the job can be opened by its name (a name vanishes with its last handle)
while either runs: the host lists its members and terminates it. Everything here is ctypes over
kernel32; elsewhere the functions say it is Windows only.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ERROR_ALREADY_EXISTS = 183
ERROR_ACCESS_DENIED = 5
JOB_OBJECT_QUERY = 0x0004
JOB_OBJECT_TERMINATE = 0x0008
CREATE_SUSPENDED = 0x00000004
CREATE_BREAKAWAY_FROM_JOB = 0x01000000
JOB_OBJECT_LIMIT_BREAKAWAY_OK = 0x0800
JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK = 0x1000
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
BASIC_ACCOUNTING_INFORMATION = 1
BASIC_PROCESS_ID_LIST = 3
EXTENDED_LIMIT_INFORMATION = 9
MAX_LISTED_PROCESSES = 4096
TERMINATED_EXIT_CODE = 1


def job_names(exit_path: Path) -> tuple[str, str]:
    """The job's names for the load whose exit record is ``exit_path``: in the global namespace (a
    service in session 0 and a person's CLI in session 1 see the same job), then the session's own,
    used where the global one cannot be created. A digest, so nothing of the path leaks into it."""
    digest = hashlib.sha256(os.path.normcase(str(exit_path)).encode("utf-8")).hexdigest()[:32]
    return f"Global\\gpuwarden-job-{digest}", f"gpuwarden-job-{digest}"


@dataclass(frozen=True)
class JobStanding:
    """The job object gpuwarden itself runs in, if any (a service wrapper, Task Scheduler)."""

    in_job: bool
    breakaway_ok: bool = False
    silent_breakaway: bool = False
    kill_on_close: bool = False

    @property
    def launch_flags(self) -> int:
        """The creation flag a launcher needs to leave gpuwarden's job (none where it need not). Asked
        for even where the limits read "no breakaway": they may read wrong (Wine reads none), and a
        refused breakaway costs one failed start, which the host then retries without it."""
        return CREATE_BREAKAWAY_FROM_JOB if self.in_job and not self.silent_breakaway else 0

    def note(self) -> str | None:
        """What a Windows admin should know, or None where models are independent of gpuwarden."""
        if not self.in_job or self.breakaway_ok or self.silent_breakaway:
            return None
        ending = ("it is killed when its last handle closes (kill-on-close), so models stop whenever gpuwarden"
                  " stops" if self.kill_on_close else "models stop if the wrapper terminates that job")
        return ("gpuwarden runs inside a job object that does not allow breakaway (a service wrapper): the"
                f" models it starts stay in that job, and {ending}. Allow breakaway in the wrapper, or run"
                " gpuwarden through `gpuwarden service install`")


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _ntdll = ctypes.WinDLL("ntdll")
    _kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    _kernel32.CreateJobObjectW.argtypes = [ctypes.c_void_p, wintypes.LPCWSTR]
    _kernel32.OpenJobObjectW.restype = wintypes.HANDLE
    _kernel32.OpenJobObjectW.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.LPCWSTR]
    _kernel32.OpenProcess.restype = wintypes.HANDLE
    _kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    _kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
    _kernel32.QueryInformationJobObject.argtypes = [wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p,
                                                    wintypes.DWORD, ctypes.c_void_p]
    _kernel32.TerminateJobObject.argtypes = [wintypes.HANDLE, wintypes.UINT]
    _kernel32.IsProcessInJob.argtypes = [wintypes.HANDLE, wintypes.HANDLE, ctypes.POINTER(wintypes.BOOL)]
    _kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    _kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    _kernel32.DuplicateHandle.argtypes = [wintypes.HANDLE, wintypes.HANDLE, wintypes.HANDLE,
                                          ctypes.POINTER(wintypes.HANDLE), wintypes.DWORD, wintypes.BOOL,
                                          wintypes.DWORD]
    _ntdll.NtResumeProcess.argtypes = [wintypes.HANDLE]

    class _Accounting(ctypes.Structure):
        _fields_ = [("times", ctypes.c_int64 * 4), ("page_faults", wintypes.DWORD),
                    ("total_processes", wintypes.DWORD), ("active_processes", wintypes.DWORD),
                    ("terminated_processes", wintypes.DWORD)]

    class _ProcessIds(ctypes.Structure):
        _fields_ = [("assigned", wintypes.DWORD), ("listed", wintypes.DWORD),
                    ("ids", ctypes.c_size_t * MAX_LISTED_PROCESSES)]

    class _BasicLimits(ctypes.Structure):
        _fields_ = [("per_process_user_time", ctypes.c_int64), ("per_job_user_time", ctypes.c_int64),
                    ("flags", wintypes.DWORD), ("min_working_set", ctypes.c_size_t),
                    ("max_working_set", ctypes.c_size_t), ("active_process_limit", wintypes.DWORD),
                    ("affinity", ctypes.c_size_t), ("priority_class", wintypes.DWORD),
                    ("scheduling_class", wintypes.DWORD)]

    class _ExtendedLimits(ctypes.Structure):
        _fields_ = [("basic", _BasicLimits), ("io", ctypes.c_uint64 * 6), ("process_memory", ctypes.c_size_t),
                    ("job_memory", ctypes.c_size_t), ("peak_process_memory", ctypes.c_size_t),
                    ("peak_job_memory", ctypes.c_size_t)]

    def _error(what: str) -> OSError:
        code = ctypes.get_last_error()
        return OSError(0, f"{what}: {ctypes.FormatError(code).strip()}", None, code)

    class Job:
        """An open handle on one model's job object."""

        def __init__(self, handle: int) -> None:
            self._handle = handle

        def adopt(self, process_handle: int) -> None:
            """Put a process started suspended in the job, and let it run (also when that fails). Its
            handle (Popen's) has every right; a handle to the job is left in it, so the job keeps its
            name while the model runs, even if the launcher is killed."""
            try:
                if not _kernel32.AssignProcessToJobObject(self._handle, process_handle):
                    raise _error("cannot put the model in its job object")
                shared = wintypes.HANDLE()
                _kernel32.DuplicateHandle(_kernel32.GetCurrentProcess(), self._handle, process_handle,
                                          ctypes.byref(shared), JOB_OBJECT_QUERY, False, 0)  # query only
            finally:
                _ntdll.NtResumeProcess(process_handle)

        def active_processes(self) -> int:
            info = _Accounting()
            if not _kernel32.QueryInformationJobObject(self._handle, BASIC_ACCOUNTING_INFORMATION,
                                                       ctypes.byref(info), ctypes.sizeof(info), None):
                raise _error("cannot read the job object")
            return int(info.active_processes)

        def pids(self) -> frozenset[int]:
            """The job's processes (at most 4,096 of them listed)."""
            info = _ProcessIds()
            _kernel32.QueryInformationJobObject(self._handle, BASIC_PROCESS_ID_LIST, ctypes.byref(info),
                                                ctypes.sizeof(info), None)  # a longer list fills what fits
            return frozenset(int(pid) for pid in info.ids[:min(int(info.listed), MAX_LISTED_PROCESSES)])

        def terminate(self) -> bool:
            return bool(_kernel32.TerminateJobObject(self._handle, TERMINATED_EXIT_CODE))

        def close(self) -> None:
            if self._handle:
                _kernel32.CloseHandle(self._handle)
                self._handle = 0

    def create_job(exit_path: Path) -> Job:
        """A new job for one load. A job by that name that exists already was not made by this launcher
        (a squatter guessing names): it is never used."""
        for name in job_names(exit_path):
            handle = _kernel32.CreateJobObjectW(None, name)
            error = ctypes.get_last_error()
            if handle and error == ERROR_ALREADY_EXISTS:
                _kernel32.CloseHandle(handle)
                raise OSError(0, f"a job object named {name} exists already", None, error)
            if handle:
                return Job(handle)
            if error != ERROR_ACCESS_DENIED:
                break
        raise _error("cannot create the model's job object")

    def open_job(exit_path: Path | None) -> Job | None:
        """The load's job, while its launcher (or anything else) holds it open."""
        if exit_path is None:
            return None
        for name in job_names(exit_path):
            handle = _kernel32.OpenJobObjectW(JOB_OBJECT_QUERY | JOB_OBJECT_TERMINATE, False, name)
            if handle:
                return Job(handle)
        return None

    def own_standing() -> JobStanding:
        """The job gpuwarden runs in (none: every limit reads False)."""
        in_job = wintypes.BOOL(False)
        if not _kernel32.IsProcessInJob(_kernel32.GetCurrentProcess(), None, ctypes.byref(in_job)) or not in_job:
            return JobStanding(in_job=False)
        limits = _ExtendedLimits()
        if not _kernel32.QueryInformationJobObject(None, EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits),
                                                   ctypes.sizeof(limits), None):
            return JobStanding(in_job=True)  # unreadable: assume the strictest
        flags = int(limits.basic.flags)
        return JobStanding(in_job=True, breakaway_ok=bool(flags & JOB_OBJECT_LIMIT_BREAKAWAY_OK),
                           silent_breakaway=bool(flags & JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK),
                           kill_on_close=bool(flags & JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE))

else:

    class Job:
        """Job objects are Windows only: nothing here ever creates one."""

        def adopt(self, process_handle: int) -> None:
            raise OSError("job objects are Windows only")

        def active_processes(self) -> int:
            return 0

        def pids(self) -> frozenset[int]:
            return frozenset()

        def terminate(self) -> bool:
            return False

        def close(self) -> None:
            return None

    def create_job(exit_path: Path) -> Job:
        raise OSError("job objects are Windows only")

    def open_job(exit_path: Path | None) -> Job | None:
        return None

    def own_standing() -> JobStanding:
        return JobStanding(in_job=False)
