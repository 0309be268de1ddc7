"""Pure: what ``gpuwarden service install`` sets up, as text and commands, for systemd (Linux) and
Task Scheduler (Windows). :mod:`gpuwarden.service.system` carries it out.

Both keep the models running when gpuwarden itself stops or restarts: systemd is told to stop only
gpuwarden's own process (``KillMode=process``), and the scheduled task has no time limit (Task
Scheduler's default ends a task after three days).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path, PurePath
from xml.sax.saxutils import escape

SERVICE_NAME = "gpuwarden"
SYSTEMD_UNIT = f"{SERVICE_NAME}.service"
RESTART_SECONDS = 5
LOCAL_SYSTEM_SID = "S-1-5-18"


class Platform(enum.StrEnum):
    LINUX = "linux"
    WINDOWS = "win32"


@dataclass(frozen=True)
class ServiceSpec:
    """Who runs gpuwarden at boot, with which Python and configuration.

    ``system``: for the whole machine (systemd's system manager as ``account``; on Windows a task
    at boot as LocalSystem), which needs root or an administrator. Otherwise for the installing
    account only: a systemd user unit, or a task at that account's logon.
    """

    python: str
    config: PurePath
    system: bool
    account: str | None = None

    def __post_init__(self) -> None:
        for text in (self.python, str(self.config), self.account or ""):
            if "\n" in text or "\r" in text or "\0" in text:
                raise ValueError(f"a line break in {text[:60]!r} would break the service definition")

    def argv(self) -> list[str]:
        return [self.python, "-m", SERVICE_NAME, "--config", str(self.config), "serve"]


@dataclass(frozen=True)
class Step:
    """One thing install, uninstall or status does: run ``argv``; or write ``text`` to ``path``
    (``text`` None: remove ``path``)."""

    argv: tuple[str, ...] = ()
    path: PurePath | None = None
    text: str | None = None
    encoding: str = "utf-8"
    may_fail: bool = False  # e.g. stopping what is not running


def systemd_quote(word: str) -> str:
    """One word of a systemd ``ExecStart=`` line (systemd's own quoting; ``%`` is a specifier and
    ``$`` a variable, even inside quotes: both are doubled)."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not any(ch in word for ch in ' \t"\'\\;$'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(spec: ServiceSpec) -> str:
    user_line = f"User={spec.account}\n" if spec.system and spec.account else ""
    return (
        "# Written by `gpuwarden service install`; remove it with `gpuwarden service uninstall`.\n"
        "[Unit]\n"
        "Description=gpuwarden: load models only onto GPUs nobody else is using\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\n"
        f"{user_line}"
        f"ExecStart={' '.join(systemd_quote(word) for word in spec.argv())}\n"
        f"WorkingDirectory={str(spec.config.parent).replace('%', '%%')}\n"  # taken as it is: no quotes
        "Environment=PYTHONUNBUFFERED=1\n"
        f"Restart=on-failure\nRestartSec={RESTART_SECONDS}\n"
        "# Exit code 2 is a configuration error: restarting would not mend it.\n"
        "RestartPreventExitStatus=2\n"
        "# Stop gpuwarden only: the models it started keep running and are adopted again at its next start.\n"
        "KillMode=process\n\n"
        "[Install]\n"
        f"WantedBy={'multi-user.target' if spec.system else 'default.target'}\n")


def systemd_unit_path(spec: ServiceSpec, home: Path) -> Path:
    if spec.system:
        return Path("/etc/systemd/system") / SYSTEMD_UNIT
    return home / ".config" / "systemd" / "user" / SYSTEMD_UNIT


def _windows_argument(word: str) -> str:
    """One argument of a Windows command line (the rules the C runtime parses back)."""
    if word and not any(ch in word for ch in ' \t"'):
        return word
    return '"' + word.replace('"', '\\"') + '"'


def task_xml(spec: ServiceSpec) -> str:
    """A Task Scheduler definition: at boot as LocalSystem (system) or at the account's logon,
    restarted on failure, never ended for running long."""
    if spec.system:
        trigger = "<BootTrigger><Enabled>true</Enabled></BootTrigger>"
        principal = (f"<UserId>{LOCAL_SYSTEM_SID}</UserId><RunLevel>HighestAvailable</RunLevel>")
    else:
        user = escape(spec.account or "")
        trigger = f"<LogonTrigger><Enabled>true</Enabled><UserId>{user}</UserId></LogonTrigger>"
        principal = f"<UserId>{user}</UserId><LogonType>InteractiveToken</LogonType><RunLevel>LeastPrivilege</RunLevel>"
    arguments = " ".join(_windows_argument(word) for word in spec.argv()[1:])
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>gpuwarden: load models only onto GPUs nobody else is using</Description>
  </RegistrationInfo>
  <Triggers>{trigger}</Triggers>
  <Principals><Principal id="Author">{principal}</Principal></Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <RestartOnFailure><Interval>PT1M</Interval><Count>255</Count></RestartOnFailure>
    <Priority>4</Priority>
    <StartWhenAvailable>true</StartWhenAvailable>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(spec.python)}</Command>
      <Arguments>{escape(arguments)}</Arguments>
      <WorkingDirectory>{escape(str(spec.config.parent))}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"""


def _systemctl(system: bool) -> tuple[str, ...]:
    """systemd's system manager, or the user's own."""
    return ("systemctl",) if system else ("systemctl", "--user")


def install_steps(spec: ServiceSpec, platform: Platform, *, home: Path, task_file: Path) -> list[Step]:
    if platform is Platform.WINDOWS:
        return [Step(path=task_file, text=task_xml(spec), encoding="utf-16"),
                Step(("schtasks", "/Create", "/TN", SERVICE_NAME, "/XML", str(task_file), "/F")),
                Step(("schtasks", "/End", "/TN", SERVICE_NAME), may_fail=True),  # a reinstall: the new one runs
                Step(("schtasks", "/Run", "/TN", SERVICE_NAME))]
    systemctl = _systemctl(spec.system)
    return [Step(path=systemd_unit_path(spec, home), text=systemd_unit(spec)),
            Step((*systemctl, "daemon-reload")),
            Step((*systemctl, "enable", SYSTEMD_UNIT)),
            Step((*systemctl, "restart", SYSTEMD_UNIT))]  # a reinstall: the new one runs (models stay)


def uninstall_steps(system: bool, platform: Platform, *, home: Path) -> list[Step]:
    """Stop and remove the service; the models keep running (the next gpuwarden adopts them)."""
    if platform is Platform.WINDOWS:
        return [Step(("schtasks", "/End", "/TN", SERVICE_NAME), may_fail=True),
                Step(("schtasks", "/Delete", "/TN", SERVICE_NAME, "/F"))]
    systemctl = _systemctl(system)
    unit = systemd_unit_path(ServiceSpec("", PurePath(), system), home)
    return [Step((*systemctl, "disable", "--now", SYSTEMD_UNIT), may_fail=True), Step(path=unit),
            Step((*systemctl, "daemon-reload"))]


def status_steps(system: bool, platform: Platform) -> list[Step]:
    if platform is Platform.WINDOWS:
        return [Step(("schtasks", "/Query", "/TN", SERVICE_NAME, "/FO", "LIST", "/V"))]
    systemctl = _systemctl(system)
    return [Step((*systemctl, "status", "--no-pager", SYSTEMD_UNIT), may_fail=True)]
