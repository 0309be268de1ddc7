"""The desktop's processes (dwm.exe, explorer.exe, Xorg, gnome-shell) are shown but do not make a GPU
"occupied by someone else": the rule is data (``desktop_processes``), names are untrusted, so a
compute-only process is never the desktop's, whatever its name."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwarden.classify import classify
from gpuwarden.config import ConfigError
from gpuwarden.desktop import DEFAULT_DESKTOP_PROCESSES, NO_DESKTOP, DesktopRule, base_name
from gpuwarden.probe.assemble import build_snapshot
from gpuwarden.probe.parse import parse_output
from gpuwarden.records import GpuProcess, GpuReading, GpuState, PlacementView, Snapshot
from tests.conftest import PUBLIC, make_settings

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
DEFAULT = DesktopRule.of(DEFAULT_DESKTOP_PROCESSES)
WINDOWS_USER_APPS = ("Video.UI.exe", "cef_server.exe", "chrome.exe", "ToDesk.exe", "OneDrive.exe", "Snipaste.exe",
                     "Code.exe", "msedgewebview2.exe")


def windows_desktop() -> Snapshot:
    """An RTX 3080 driving monitors under WDDM: 665 MiB used, 17 processes, every memory figure N/A."""
    text = (PUBLIC / "017-rtx3080-576.80-windows-cg.txt").read_text(encoding="utf-8")
    return build_snapshot([parse_output(text)], NOW, "nvidia-smi")


def linux(*processes: GpuProcess, used: int) -> Snapshot:
    gpu = GpuReading(index=0, name="RTX A6000", memory_used_mib=used, memory_total_mib=49140)
    return Snapshot(taken_at=NOW, source="test", gpus=(gpu,), processes=processes)


def xorg(mib: int = 300, kind: str | None = "G", name: str = "/usr/lib/xorg/Xorg") -> GpuProcess:
    return GpuProcess(pid=1500, name=name, type=kind, used_memory_mib=mib, gpu_index=0, user="root")


@pytest.mark.parametrize(("name", "kind", "desktop"), [
    ("C:\\Windows\\System32\\dwm.exe", "C+G", True),
    ("C:\\Windows\\explorer.exe", "C+G", True),
    ("DWM.EXE", "C+G", True),
    ("...h_cw5n1h2txyewy\\SearchApp.exe", "C+G", True),  # nvidia-smi's table cuts paths at the front
    ("/usr/lib/xorg/Xorg", "G", True),
    ("/usr/bin/gnome-shell", "G", True),
    ("gnome-shell", None, False),  # the compute-apps CSV gives no type: it lists compute processes
    ("C:\\Windows\\System32\\dwm.exe", "M+C", False),  # MPS
    ("C:\\Windows\\System32\\dwm.exe", "C", False),  # a CUDA program called dwm.exe is not the desktop
    ("/home/mallory/Xorg", "C", False),
    ("...rtMenuExperienceHost.exe", "C+G", False),  # the name itself was cut: unknown
    ("C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe", "C+G", False),
    ("python3", "C", False),
    ("", "G", False),
])
def test_the_default_rule(name: str, kind: str | None, desktop: bool) -> None:
    assert DEFAULT.matches(name, kind) is desktop


@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=5)))
def test_any_name_and_type_is_an_answer_never_a_crash(name: str, kind: str | None) -> None:
    answer = DEFAULT.matches(name, kind)
    assert isinstance(answer, bool)
    assert not NO_DESKTOP.matches(name, kind)
    if kind is not None and kind.strip().upper() == "C":
        assert answer is False
    base = base_name(name)
    assert base is None or ("/" not in base and "\\" not in base)


def test_a_windows_display_gpu_with_someone_elses_cuda_process_is_occupied() -> None:
    """The recorded sample: ollama.exe (type C) runs among the desktop's processes."""
    everything = DesktopRule.of((*DEFAULT_DESKTOP_PROCESSES, *WINDOWS_USER_APPS))
    gpu = classify(windows_desktop(), 30, desktop=everything).gpus[0]
    assert gpu.state is GpuState.OCCUPIED_BY_OTHERS and not gpu.loadable
    assert "ollama.exe" in gpu.reason and "explorer.exe" not in gpu.reason
    desktop = {p.process_name.rsplit("\\", 1)[-1] for p in gpu.process_info if p.desktop}
    assert "explorer.exe" in desktop and "ollama.exe" not in desktop


def test_a_windows_display_gpu_held_by_the_desktop_alone_is_idle() -> None:
    snapshot = windows_desktop()
    shell_only = replace(snapshot, processes=tuple(p for p in snapshot.processes if DEFAULT.matches(p.name, p.type)))
    assert len(shell_only.processes) == 7
    gpu = classify(shell_only, 30, desktop=DEFAULT).gpus[0]
    assert gpu.state is GpuState.IDLE and gpu.loadable and gpu.select_enabled
    assert gpu.desktop_memory_mib == 665  # figures are N/A under WDDM: with nothing else listed, all of it
    assert gpu.reason.startswith("idle: desktop 665 MiB (") and "0 MiB other use <= 30 MiB" in gpu.reason
    document = classify(shell_only, 30, desktop=DEFAULT).to_dict()
    assert document["gpu_status"][0]["desktop_memory_mib"] == 665
    assert all(p["desktop"] and p["foreign"] for p in document["gpu_status"][0]["process_info"])
    assert classify(shell_only, 30).gpus[0].state is GpuState.OCCUPIED_BY_OTHERS  # no rule: it all counts


def test_user_apps_left_out_of_the_list_still_count() -> None:
    """Chrome on the display GPU is someone's program: it counts unless the list names it."""
    snapshot = windows_desktop()
    no_ollama = replace(snapshot, processes=tuple(p for p in snapshot.processes if "ollama" not in p.name))
    assert classify(no_ollama, 30, desktop=DEFAULT).gpus[0].state is GpuState.OCCUPIED_BY_OTHERS
    everything = DesktopRule.of((*DEFAULT_DESKTOP_PROCESSES, *WINDOWS_USER_APPS))
    assert classify(no_ollama, 30, desktop=everything).gpus[0].state is GpuState.IDLE


@pytest.mark.parametrize(("used", "extra_mib", "state", "said", "desktop_mib"), [
    (310, 0, GpuState.IDLE, "idle: desktop 310 MiB (Xorg) not counted; 0 MiB other use <= 30 MiB", 310),
    # only the desktop listed, but far more used: a job the host does not list (WSL2, a container)
    (2400, 0, GpuState.OCCUPIED_BY_OTHERS, "2400 MiB used, 352 MiB of it not the desktop's > 30 MiB", 2048),
    (700, 400, GpuState.OCCUPIED_BY_OTHERS, "700 MiB used, 400 MiB of it not the desktop's > 30 MiB; PID 77", 300),
])
def test_linux_the_desktops_share_is_taken_off_what_is_used(used: int, extra_mib: int, state: GpuState,
                                                            said: str, desktop_mib: int) -> None:
    """Known figures (Linux reports them): what is left after the desktop's share decides. With only
    the desktop listed, unlisted memory is the desktop's up to desktop_memory_limit_mib, never more."""
    cuda = GpuProcess(pid=77, name="python3", type="C", used_memory_mib=extra_mib, gpu_index=0)
    others = (cuda,) if extra_mib else ()
    gpu = classify(linux(xorg(), *others, used=used), 30, desktop=DEFAULT).gpus[0]
    assert gpu.state is state and said in gpu.reason and gpu.desktop_memory_mib == desktop_mib


@pytest.mark.parametrize("kind", ["G", "C+G"])
def test_no_name_hides_more_than_the_limit(kind: str) -> None:
    """`exec -a Xorg python train.py` with a graphics context: at most the limit is credited."""
    impostor = xorg(mib=21_900, kind=kind, name="/home/eve/Xorg")
    gpu = classify(linux(impostor, used=22_000), 30, desktop=DEFAULT).gpus[0]
    assert gpu.state is GpuState.OCCUPIED_BY_OTHERS and gpu.desktop_memory_mib == 2048
    strict = classify(linux(impostor, used=22_000), 30, desktop=DesktopRule.of(DEFAULT_DESKTOP_PROCESSES, 0)).gpus[0]
    assert strict.state is GpuState.OCCUPIED_BY_OTHERS and strict.desktop_memory_mib == 0


def test_wddm_desktop_alone_with_a_job_the_host_does_not_list_is_busy() -> None:
    """Only dwm.exe listed (N/A, as WDDM prints it) but 22 GB used: a WSL2 or GPU-P job."""
    dwm = GpuProcess(pid=2056, name="C:\\Windows\\System32\\dwm.exe", type="C+G", gpu_index=0)
    gpu = classify(linux(dwm, used=22_000), 30, desktop=DEFAULT).gpus[0]
    assert gpu.state is GpuState.OCCUPIED_BY_OTHERS and gpu.desktop_memory_mib == 2048


def test_a_compute_process_named_like_the_desktop_makes_the_gpu_busy() -> None:
    impostor = xorg(mib=8000, kind="C", name="Xorg")
    gpu = classify(linux(impostor, used=8000), 30, desktop=DEFAULT).gpus[0]
    assert gpu.state is GpuState.OCCUPIED_BY_OTHERS and gpu.desktop_memory_mib is None
    assert not gpu.process_info[0].desktop


def test_a_model_beside_the_desktop_does_not_share_its_gpu_with_someone_else() -> None:
    model = GpuProcess(pid=4000, name="llama-server", type="C", used_memory_mib=9000, gpu_index=0)
    placement = PlacementView(model_name="llama", gpu_indexes=(0,), own_pids=frozenset({4000}))
    gpu = classify(linux(xorg(), model, used=9300), 30, [placement], desktop=DEFAULT).gpus[0]
    assert gpu.state is GpuState.MODEL_LOADED and not gpu.shared_with_others
    assert "also used by others" not in gpu.reason


def test_the_setting_parses_once_at_the_edge(tmp_path: Path) -> None:
    assert make_settings(tmp_path).desktop_processes == DEFAULT_DESKTOP_PROCESSES
    assert make_settings(tmp_path, desktop_processes="dwm.exe, Xorg").desktop_processes == ("dwm.exe", "Xorg")
    assert make_settings(tmp_path, desktop_processes=[]).desktop_processes == ()
    for bad in (["C:\\Windows\\dwm.exe"], ["/usr/bin/Xorg"], ["x\x1b[2J"], ["   "], ["a" * 200]):
        with pytest.raises(ConfigError, match="desktop_processes"):
            make_settings(tmp_path, desktop_processes=bad)


def test_the_terminal_shows_the_desktops_share_and_whose_each_process_is() -> None:
    from gpuwarden.cli.main import format_status

    snapshot = windows_desktop()
    shell_only = replace(snapshot, processes=tuple(p for p in snapshot.processes if DEFAULT.matches(p.name, p.type)))
    text = format_status(classify(shell_only, 30, desktop=DEFAULT))
    assert "idle (desktop: 665 MiB)" in text
    rows = [line for line in text.splitlines() if line.strip().startswith("PID")]
    assert len(rows) == 7 and all(row.rstrip().endswith("desktop") for row in rows)
    busy = format_status(classify(windows_desktop(), 30, desktop=DEFAULT))
    assert "desktop: " not in busy
    assert any("ollama.exe" in row and row.rstrip().endswith("foreign") for row in busy.splitlines())
