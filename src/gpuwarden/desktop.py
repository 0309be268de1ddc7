"""Pure: which GPU processes are the desktop's (a window manager, the shell, the X server), whose memory
is shown but does not make a GPU "occupied by someone else". The rule is data, from the
``desktop_processes`` setting: a list of process names.

Process names are untrusted (anyone can call a program ``dwm.exe``), so a name alone is not enough:
a process that nvidia-smi reports as compute only (type ``C``: CUDA) is never the desktop's,
whatever its name. Desktop processes draw (type ``G`` or ``C+G``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The desktop shells of Windows 10/11 and of the common Linux desktops (X11 and Wayland).
DEFAULT_DESKTOP_PROCESSES: tuple[str, ...] = (
    # Windows
    "dwm.exe", "explorer.exe", "SearchHost.exe", "SearchApp.exe", "SearchUI.exe",
    "StartMenuExperienceHost.exe", "ShellExperienceHost.exe", "TextInputHost.exe", "LockApp.exe",
    "ApplicationFrameHost.exe", "SystemSettings.exe", "Widgets.exe", "ctfmon.exe",
    # Linux
    "Xorg", "X", "Xwayland", "gnome-shell", "kwin_x11", "kwin_wayland", "plasmashell", "cinnamon",
    "mutter", "xfwm4", "sway", "Hyprland", "gdm-x-session",
)
COMPUTE_ONLY = "C"
MAX_NAME_CHARS = 128


def _normalized(name: str) -> str:
    """Compared case-insensitively, with or without Windows' ``.exe``."""
    lowered = name.strip().lower()
    return lowered.removesuffix(".exe")


def base_name(process_name: str) -> str | None:
    """The program's own name from what nvidia-smi prints (a full path on Windows, sometimes cut at
    the front with ``...``); None where the name itself was cut."""
    last = process_name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not last or last.startswith("..."):
        return None
    return last


@dataclass(frozen=True)
class DesktopRule:
    """The desktop's process names, normalized once."""

    names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, names: Iterable[str]) -> DesktopRule:
        return cls(frozenset(_normalized(name) for name in names if name.strip()))

    def matches(self, process_name: str, process_type: str | None) -> bool:
        """Is this process the desktop's? Its program's name is listed, and it is not compute only."""
        if not self.names or (process_type or "").strip().upper() == COMPUTE_ONLY:
            return False
        name = base_name(process_name)
        return name is not None and _normalized(name) in self.names


NO_DESKTOP = DesktopRule()
