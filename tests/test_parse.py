"""Every recorded output yields the values its sidecar / README states; malformed input only ever
raises NvidiaSmiParseError."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.probe.parse import (
    NvidiaSmiParseError,
    detect_kind,
    normalize_bus_id,
    parse_mib,
    parse_output,
)
from gpuwarden.records import OutputKind
from tests.conftest import H200, PUBLIC

SIDECARS = sorted(PUBLIC.glob("*.json"))


def sidecar_columns(meta: dict[str, Any]) -> list[str] | None:
    command = meta.get("command") or ""
    if "noheader" not in command:
        return None
    query = next(part for part in command.split() if part.startswith("--query"))
    return query.split("=", 1)[1].split(",")


SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nvidia-smi"
MANIFEST = PUBLIC.parent / "MANIFEST.sha256"  # "<sha256>  <path>" of every fixture copied from ../shared


def read_manifest() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        assert len(digest) == 64 and name not in entries and not name.startswith("/") and ".." not in name, line
        entries[name] = digest
    return entries


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_manifest_fixture_is_here_unchanged() -> None:
    """The copies under tests/ are byte for byte what ../shared holds (the suite runs without ../shared)."""
    manifest = read_manifest()
    assert len(manifest) >= 40 and "public/README.md" in manifest and "h200-driver-580/busy_xml.txt" in manifest
    local = {name: sha256_of(PUBLIC.parent / name) for name in manifest if (PUBLIC.parent / name).is_file()}
    assert local == manifest


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not beside this checkout")
def test_manifest_lists_exactly_the_shared_fixtures() -> None:
    """A fixture added to (or changed in) ../shared must be copied into tests/ and listed in the manifest."""
    shared = {p.relative_to(SHARED).as_posix(): sha256_of(p) for p in SHARED.rglob("*") if p.is_file()}
    assert shared == read_manifest()


@pytest.mark.parametrize("sidecar", SIDECARS, ids=lambda p: p.stem)
def test_public_fixture(sidecar: Path) -> None:
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    text = sidecar.with_suffix(".txt").read_text(encoding="utf-8")
    parsed = parse_output(text, sidecar_columns(meta))
    expected = meta["expected"]
    assert parsed.kind.value == meta["kind"]
    gpus = [{"index": g.index, "memory_used_mib": g.memory_used_mib, "memory_total_mib": g.memory_total_mib}
            for g in parsed.gpus]
    assert gpus == expected["gpus"]
    processes = [{"gpu_index": p.gpu_index, "pid": p.pid, "name": p.name, "type": p.type,
                  "used_mib": p.used_memory_mib} for p in parsed.processes]
    assert processes == [{k: p[k] for k in ("gpu_index", "pid", "name", "type", "used_mib")}
                         for p in expected["processes"]]
    for got, want in zip(parsed.processes, expected["processes"], strict=True):
        if "gpu_uuid" in want:
            assert got.gpu_uuid == want["gpu_uuid"]
            assert got.gpu_bus_id == normalize_bus_id(want["gpu_bus_id"])
    if expected["error"]:
        assert parsed.kind is OutputKind.ERROR
        assert expected["error"] in " ".join(parsed.messages)
    else:
        assert parsed.messages == ()


H200_BUSY = {"memory_used_mib": 3193, "pids": [701, 702], "process_mib": [2566, 612]}


@pytest.mark.parametrize("name", ["busy_table.txt", "busy_table_as_other_user.txt", "busy_xml.txt"])
def test_h200_busy_with_processes(name: str) -> None:
    parsed = parse_output((H200 / name).read_text(encoding="utf-8"))
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in parsed.gpus] == [(0, 3193, 143771)]
    assert [(p.gpu_index, p.pid, p.name, p.used_memory_mib) for p in parsed.processes] == [
        (0, 701, "python3", 2566), (0, 702, "python3", 612)]


@pytest.mark.parametrize(("name", "used", "total"), [
    ("busy_q_min.txt", 3193, None), ("busy_q_min_header.txt", 3193, None), ("busy_q_full.txt", 3193, 143771),
    ("idle_q_min.txt", 0, None), ("idle_q_min_nounits.txt", 0, None), ("idle_q_full.txt", 0, 143771),
    ("idle_table.txt", 0, 143771), ("idle_xml.txt", 0, 143771),
])
def test_h200_gpu_memory(name: str, used: int, total: int | None) -> None:
    parsed = parse_output((H200 / name).read_text(encoding="utf-8"))
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in parsed.gpus] == [(0, used, total)]


def test_h200_full_query_reads_uuid_and_ignores_deprecated_fields() -> None:
    gpu = parse_output((H200 / "busy_q_full.txt").read_text(encoding="utf-8")).gpus[0]
    assert gpu.uuid == "GPU-9f039991-11fe-c64c-80b4-7cef67a5df02"
    assert gpu.name == "NVIDIA H200"
    assert gpu.bus_id == "0000:00:06.0"


@pytest.mark.parametrize("name", ["busy_apps.txt", "busy_apps_noheader.txt"])
def test_h200_compute_apps_name_gpu_by_uuid(name: str) -> None:
    parsed = parse_output((H200 / name).read_text(encoding="utf-8"))
    assert parsed.kind is OutputKind.CSV_APPS
    assert [(p.pid, p.name, p.used_memory_mib, p.gpu_index, p.gpu_uuid) for p in parsed.processes] == [
        (701, "python3", 2566, None, "GPU-9f039991-11fe-c64c-80b4-7cef67a5df02"),
        (702, "python3", 612, None, "GPU-9f039991-11fe-c64c-80b4-7cef67a5df02")]


def test_h200_idle_apps_is_header_only() -> None:
    parsed = parse_output((H200 / "idle_apps.txt").read_text(encoding="utf-8"))
    assert parsed.kind is OutputKind.CSV_APPS and parsed.processes == () and parsed.lists_processes


def test_h200_pmon_and_list() -> None:
    pmon = parse_output((H200 / "busy_pmon.txt").read_text(encoding="utf-8"))
    assert [(p.gpu_index, p.pid, p.name, p.type) for p in pmon.processes] == [
        (0, 701, "python3", "C"), (0, 702, "python3", "C")]
    listing = parse_output((H200 / "list.txt").read_text(encoding="utf-8"))
    assert [(g.index, g.name, g.uuid, g.memory_used_mib) for g in listing.gpus] == [
        (0, "NVIDIA H200", "GPU-9f039991-11fe-c64c-80b4-7cef67a5df02", None)]


@pytest.mark.parametrize("name", ["help_query_gpu.txt", "version.txt"])
def test_non_status_outputs_are_refused_clearly(name: str) -> None:
    with pytest.raises(NvidiaSmiParseError, match="unrecognised"):
        parse_output((H200 / name).read_text(encoding="utf-8"))


# Error outputs seen in the wild (see the public README): message kept verbatim.
ERRORS = [
    "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 535.183\n",
    "Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error\n",
    "Unable to determine the device handle for GPU 0000:02:00.0: GPU is lost.  Reboot the system to recover this GPU\n",
    "No devices were found\n",
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest"
    " NVIDIA driver is installed and running.\n",
    "'nvidia-smi' is not recognized as an internal or external command,\noperable program or batch file.\n",
]


@pytest.mark.parametrize("text", ERRORS)
def test_error_outputs(text: str) -> None:
    parsed = parse_output(text)
    assert parsed.kind is OutputKind.ERROR
    assert parsed.gpus == ()
    assert parsed.messages[0].startswith(text.splitlines()[0].strip())


def test_error_line_before_table_is_kept_and_gaps_in_indexes_survive() -> None:
    table = (PUBLIC / "013-v100s-x8-535.171.04-one-busy.txt").read_text(encoding="utf-8")
    lines = table.splitlines()
    # drop GPU 1's block (4 lines after GPU 0's block) to make indexes 0, 2, 3...
    start = next(i for i, line in enumerate(lines) if line.startswith("|   1  Tesla"))
    del lines[start:start + 4]
    text = "Unable to determine the device handle for GPU0000:00:07.0: Unknown Error\n" + "\n".join(lines)
    parsed = parse_output(text)
    assert [g.index for g in parsed.gpus] == [0, 2, 3, 4, 5, 6, 7]
    assert parsed.messages == ("Unable to determine the device handle for GPU0000:00:07.0: Unknown Error",)


def test_bom_crlf_and_no_trailing_newline() -> None:
    text = (PUBLIC / "017-rtx3080-576.80-windows-cg.txt").read_text(encoding="utf-8")
    parsed = parse_output("\ufeff" + text.replace("\n", "\r\n").rstrip())
    assert len(parsed.processes) == 17 and parsed.gpus[0].memory_used_mib == 665


def test_kmd_version_header_and_empty_process_box() -> None:
    text = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 590.00                 KMD Version: 590.00            CUDA UMD Version: 13.1 |
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                  Driver-Model | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|=========================================+========================+======================|
|   0  NVIDIA RTX PRO 6000             TCC|   00000000:41:00.0 Off |                  Off |
| 30%   35C    P8             14W /  600W |    2200MiB /  97887MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+

+-----------------------------------------------------------------------------------------+
| Processes:                                                                              |
|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |
|        ID   ID                                                               Usage      |
|=========================================================================================|
+-----------------------------------------------------------------------------------------+
"""
    parsed = parse_output(text)
    assert parsed.driver_version == "590.00"
    assert [(g.index, g.name, g.memory_used_mib) for g in parsed.gpus] == [(0, "NVIDIA RTX PRO 6000", 2200)]
    assert parsed.processes == () and parsed.lists_processes


def test_lost_gpu_memory_is_none() -> None:
    text = (PUBLIC / "008-v100x4-450.57-one-busy.txt").read_text(encoding="utf-8").replace(
        "|      0MiB / 16160MiB |      0%      Default |", "|    ERR!    /   ERR!  |    ERR!      Default |", 1)
    parsed = parse_output(text)
    assert parsed.gpus[1].memory_used_mib is None and parsed.gpus[0].memory_used_mib == 5918


def test_csv_placeholders_and_units() -> None:
    text = ("index, name, memory.used [MiB], memory.total [MiB]\n0, A, [N/A], 100 MiB\n1, B, N/A, \n"
            "2, C, [Not Supported], [Requested functionality has been deprecated]\n3, D, 12, 99")
    parsed = parse_output(text)
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in parsed.gpus] == [
        (0, None, 100), (1, None, None), (2, None, None), (3, 12, 99)]


def test_csv_apps_process_name_with_comma() -> None:
    text = "gpu_uuid, pid, process_name, used_gpu_memory [MiB]\nGPU-1, 12, C:\\a,b\\x.exe, 5 MiB\n"
    process = parse_output(text).processes[0]
    assert (process.pid, process.name, process.used_memory_mib) == (12, "C:\\a,b\\x.exe", 5)


def test_headerless_csv_needs_columns_unless_the_shape_is_known() -> None:
    text = (PUBLIC / "032-csv-gpu-titanx-x8-noheader-nounits.txt").read_text(encoding="utf-8")
    with pytest.raises(NvidiaSmiParseError, match="name its columns"):
        parse_output(text)
    recorded_with_command = "$ nvidia-smi --query-gpu=index,uuid,name,temperature.gpu,utilization.gpu," \
        "memory.used,memory.total --format=csv,noheader,nounits\n" + text
    assert parse_output(recorded_with_command).gpus[1].memory_used_mib == 10032


def test_mig_rows_are_not_gpus() -> None:
    parsed = parse_output((PUBLIC / "024-h100-mig-590.48.01-load.txt").read_text(encoding="utf-8"))
    assert len(parsed.gpus) == 1 and parsed.gpus[0].memory_used_mib == 11125


@pytest.mark.parametrize(("text", "value"), [("3193 MiB", 3193), ("0", 0), ("[N/A]", None), ("", None),
                                             ("12.6 MiB", 13), ("-5", None), ("nan", None), ("1e400", None)])
def test_parse_mib(text: str, value: int | None) -> None:
    assert parse_mib(text) == value


def test_xml_with_entities_is_refused() -> None:
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><nvidia_smi_log>&a;</nvidia_smi_log>'
    with pytest.raises(NvidiaSmiParseError, match="entities"):
        parse_output(bomb)


def test_truncated_xml_is_a_parse_error() -> None:
    text = (H200 / "busy_xml.txt").read_text(encoding="utf-8")
    with pytest.raises(NvidiaSmiParseError):
        parse_output(text[: len(text) // 2])
    broken = text.replace("<fb_memory_usage>", "<fb_memory_usage><<", 1)
    with pytest.raises(NvidiaSmiParseError, match="malformed"):
        parse_output(broken)


# ----------------------------------------------------------------------------- property-based

REAL_TEXTS = [p.read_text(encoding="utf-8") for p in sorted(PUBLIC.glob("*.txt")) + sorted(H200.glob("*.txt"))]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3000))
def test_any_text_parses_or_raises_parse_error(text: str) -> None:
    with contextlib.suppress(NvidiaSmiParseError):
        parse_output(text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REAL_TEXTS), st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=200),
       st.text(max_size=40))
def test_mutated_real_outputs_parse_or_raise_parse_error(text: str, position: int, cut: int, insert: str) -> None:
    position = position % (len(text) + 1)
    mutated = text[:position] + insert + text[position + cut:]
    try:
        parsed = parse_output(mutated)
    except NvidiaSmiParseError:
        return
    for gpu in parsed.gpus:
        assert gpu.memory_used_mib is None or gpu.memory_used_mib >= 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 64), st.integers(0, 2_000_000)), min_size=1, max_size=16,
                unique_by=lambda t: t[0]))
def test_seed_csv_round_trip(rows: list[tuple[int, int]]) -> None:
    text = "\n".join(f"{index}, {used} MiB" for index, used in rows)
    parsed = parse_output(text)
    assert detect_kind(text) is OutputKind.CSV_GPU
    assert [(g.index, g.memory_used_mib) for g in parsed.gpus] == rows


@pytest.mark.parametrize("prompt", ["$ nvidia-smi", "C:\\Users\\me> nvidia-smi", "nvidia-smi.exe", "# nvidia-smi -a"])
def test_a_recorded_prompt_line_is_not_an_error(prompt: str) -> None:
    text = prompt + "\n" + (PUBLIC / "019-l40s-x4-580.119.02-mixed.txt").read_text(encoding="utf-8")
    parsed = parse_output(text)
    assert parsed.messages == () and len(parsed.gpus) == 4
