"""Pure: which GPU processes are the desktop's (a window manager, the shell, the X server), whose memory
is shown but does not make a GPU "occupied by someone else". The rule is data, from the
``desktop_processes`` setting: a list of process names.

Process names are untrusted (anyone can call a program ``dwm.exe``, or start one as ``exec -a Xorg``),
and some memory is listed for nobody (a WSL2 or container job the host's nvidia-smi does not list), so:

- a process is the desktop's only if nvidia-smi says it draws (type ``G`` or ``C+G``) and its program
  has a listed name; a compute-only process (``C``, CUDA), an MPS one, or one whose type the output
  does not give (the compute-apps CSV) never is;
- what the desktop is credited with on one GPU never exceeds ``memory_limit_mib``
  (``desktop_memory_limit_mib``), so no name and no unlisted memory can make a busy GPU look idle
  beyond that.
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
DRAWS = "G"
MAX_NAME_CHARS = 128
DEFAULT_DESKTOP_MEMORY_LIMIT_MIB = 2048


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
    """The desktop's process names, normalized once, and the most memory the desktop is credited with
    on one GPU."""

    names: frozenset[str] = frozenset()
    memory_limit_mib: int = DEFAULT_DESKTOP_MEMORY_LIMIT_MIB

    @classmethod
    def of(cls, names: Iterable[str], memory_limit_mib: int = DEFAULT_DESKTOP_MEMORY_LIMIT_MIB) -> DesktopRule:
        return cls(frozenset(_normalized(name) for name in names if name.strip()), max(0, memory_limit_mib))

    def matches(self, process_name: str, process_type: str | None) -> bool:
        """Is this process the desktop's? It draws, and its program's name is listed."""
        kinds = {kind.strip() for kind in (process_type or "").upper().split("+")}
        if not self.names or DRAWS not in kinds:
            return False
        name = base_name(process_name)
        return name is not None and _normalized(name) in self.names


NO_DESKTOP = DesktopRule()
