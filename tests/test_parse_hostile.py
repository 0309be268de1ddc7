"""Hostile and broken nvidia-smi outputs: a parser that gets one GPU wrong can put two people's jobs
on the same GPU. Each test here failed before its fix (columns named alike, a GPU index printed twice,
memory above total or negative, XML GPUs renumbered by a missing block, unbounded numbers and
super-linear patterns, control characters in XML)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from gpuwarden.classify import classify
from gpuwarden.probe.assemble import build_snapshot
from gpuwarden.probe.parse import NvidiaSmiParseError, parse_int, parse_mib, parse_output
from gpuwarden.records import GpuReading, GpuState, OutputKind, ParsedOutput
from tests.conftest import H200, PUBLIC

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
UUID0 = "GPU-9f039991-11fe-c64c-80b4-7cef67a5df02"
TABLE_V100 = (PUBLIC / "008-v100x4-450.57-one-busy.txt").read_text(encoding="utf-8")  # GPU 0: 5918 / 16160 MiB
TABLE_H200 = (H200 / "busy_table.txt").read_text(encoding="utf-8")
XML_H200 = (H200 / "busy_xml.txt").read_text(encoding="utf-8")


def gpus_of(text: str) -> list[tuple[int, int | None, int | None]]:
    return [(g.index, g.memory_used_mib, g.memory_total_mib) for g in parse_output(text).gpus]


def states(outputs: list[ParsedOutput]) -> list[tuple[int, GpuState, bool]]:
    document = classify(build_snapshot(outputs, NOW, "test"), 30)
    return [(g.index, g.state, g.loadable) for g in document.gpus]


# ----------------------------------------------------------------------------- 1. --query-gpu=<every field>


def every_query_gpu_field() -> list[str]:
    """The first name of every field this driver's ``--help-query-gpu`` lists (214 of them)."""
    text = (H200 / "help_query_gpu.txt").read_text(encoding="utf-8")
    return [re.findall(r'"([^"]+)"', line)[0] for line in text.splitlines()
            if line.startswith('"') and not re.match(r'^"[0-9]', line)]


def test_a_query_of_every_gpu_field_reads_the_real_bus_id_not_the_bus_number() -> None:
    fields = every_query_gpu_field()
    assert len(fields) == 214 and "pci.bus" in fields and "pci.bus_id" in fields
    values = {"index": "0", "uuid": UUID0, "name": "NVIDIA H200", "pci.bus_id": "00000000:00:06.0",
              "pci.bus": "0x00", "memory.total": "143771 MiB", "memory.used": "3193 MiB"}
    header = ", ".join(f"{name} [MiB]" if name.startswith("memory.") else name for name in fields)
    row = ", ".join(values.get(name, "[N/A]") for name in fields)
    parsed = parse_output(header + "\n" + row + "\n")
    assert [(g.index, g.uuid, g.name, g.bus_id, g.memory_used_mib, g.memory_total_mib) for g in parsed.gpus] == [
        (0, UUID0, "NVIDIA H200", "0000:00:06.0", 3193, 143771)]
    assert parsed.messages == ()


@pytest.mark.parametrize("header", ["index, pci.bus, pci.bus_id, memory.used",
                                    "index, pci.bus_id, pci.bus, memory.used"])
def test_pci_bus_is_not_the_bus_id_in_either_order(header: str) -> None:
    values = {"index": "1", "pci.bus": "0x3B", "pci.bus_id": "00000000:3B:00.0", "memory.used": "7 MiB"}
    row = ", ".join(values[name.strip()] for name in header.split(","))
    gpu = parse_output(header + "\n" + row).gpus[0]
    assert (gpu.index, gpu.bus_id, gpu.memory_used_mib) == (1, "0000:3B:00.0", 7)


@pytest.mark.parametrize(("header", "named"), [
    ("index, memory.used [MiB], memory.used", "'memory.used'"),
    ("index, uuid, gpu_uuid, memory.used", "'uuid'"),  # the same field by both of its names
    ("index, memory.used, index", "'index'"),
])
def test_a_field_named_twice_is_still_refused(header: str, named: str) -> None:
    row = ", ".join("0" for _ in header.split(","))
    with pytest.raises(NvidiaSmiParseError, match=f"CSV columns named twice: {named}$"):
        parse_output(header + "\n" + row)


def test_gpu_name_is_the_name_in_a_gpu_query_and_name_is_the_process_in_an_apps_query() -> None:
    gpu = parse_output("index, gpu_name, memory.used\n0, Tesla T4, 5 MiB\n").gpus[0]
    assert (gpu.name, gpu.memory_used_mib) == ("Tesla T4", 5)
    apps = parse_output("gpu_uuid, gpu_name, pid, name, used_memory [MiB]\n"
                        f"{UUID0}, NVIDIA H200, 701, python3, 2566 MiB")
    assert [(p.pid, p.name, p.gpu_uuid, p.used_memory_mib) for p in apps.processes] == [(701, "python3", UUID0, 2566)]


# ----------------------------------------------------------------------------- 2. a GPU index twice in one output


def test_csv_with_a_gpu_index_twice_keeps_one_untrusted_reading() -> None:
    text = "index, uuid, memory.used [MiB], memory.total [MiB]\n0, GPU-a, 0 MiB, 100 MiB\n1, GPU-c, 3 MiB, 100 MiB\n" \
           "0, GPU-b, 90 MiB, 100 MiB\n"
    parsed = parse_output(text)
    assert [(g.index, g.uuid, g.memory_used_mib, g.memory_total_mib) for g in parsed.gpus] == [
        (0, None, None, 100), (1, "GPU-c", 3, 100)]  # uuids disagree: neither is kept
    assert parsed.messages == ("GPU 0 is listed 2 times in one nvidia-smi output; its reading is not trusted "
                               "(memory use treated as unreadable)",)
    assert states([parsed]) == [(0, GpuState.UNAVAILABLE, False), (1, GpuState.IDLE, True)]


def test_table_with_a_gpu_block_twice_keeps_one_untrusted_reading() -> None:
    text = TABLE_V100.replace("|   1  Tesla V100", "|   0  Tesla V100", 1)
    parsed = parse_output(text)
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in parsed.gpus] == [
        (0, None, 16160), (2, 0, 16160), (3, 0, 16160)]
    assert parsed.gpus[0].name == "Tesla V100-SXM2..." and parsed.gpus[0].bus_id is None  # bus ids differ
    assert parsed.messages == ("GPU 0 is listed 2 times in one nvidia-smi output; its reading is not trusted "
                               "(memory use treated as unreadable)",)
    snapshot = build_snapshot([parsed], NOW, "test")
    assert snapshot.error is None and snapshot.warnings == parsed.messages
    assert states([parsed])[0] == (0, GpuState.UNAVAILABLE, False)


def test_list_with_a_gpu_twice() -> None:
    text = f"GPU 0: NVIDIA H200 (UUID: {UUID0})\nGPU 0: NVIDIA H200 (UUID: GPU-other)\n"
    parsed = parse_output(text)
    assert [(g.index, g.name, g.uuid) for g in parsed.gpus] == [(0, "NVIDIA H200", None)]
    assert parsed.messages[0].startswith("GPU 0 is listed 2 times")


def test_build_snapshot_checks_every_output_even_one_not_from_the_parsers() -> None:
    output = ParsedOutput(OutputKind.NVML, gpus=(GpuReading(0, uuid=UUID0, memory_used_mib=0, memory_total_mib=10),
                                                 GpuReading(0, uuid=UUID0, memory_used_mib=9, memory_total_mib=10)))
    snapshot = build_snapshot([output], NOW, "test")
    assert [(g.index, g.uuid, g.memory_used_mib, g.memory_total_mib) for g in snapshot.gpus] == [(0, UUID0, None, 10)]
    assert snapshot.warnings == ("GPU 0 is listed 2 times in one nvidia-smi output; its reading is not trusted "
                                 "(memory use treated as unreadable)",)


def test_two_outputs_naming_one_index_for_two_different_gpus_are_not_trusted() -> None:
    csv = ParsedOutput(OutputKind.CSV_GPU, gpus=(GpuReading(0, uuid=UUID0, memory_used_mib=0),
                                                 GpuReading(1, uuid="GPU-b", memory_used_mib=0)))
    table = ParsedOutput(OutputKind.TABLE, gpus=(GpuReading(0, uuid="GPU-elsewhere", memory_used_mib=5000),
                                                 GpuReading(1, uuid="gpu-B", memory_used_mib=7000)))
    snapshot = build_snapshot([csv, table], NOW, "test")
    assert [(g.index, g.uuid, g.memory_used_mib) for g in snapshot.gpus] == [(0, UUID0, None), (1, "GPU-b", 0)]
    assert snapshot.warnings == (f"GPU 0 is uuid '{UUID0}' in one nvidia-smi output and 'GPU-elsewhere' in "
                                 "another; its reading is not trusted (memory use treated as unreadable)",)
    bus = ParsedOutput(OutputKind.TABLE, gpus=(GpuReading(0, bus_id="0000:07:00.0", memory_used_mib=0),))
    other_bus = ParsedOutput(OutputKind.CSV_GPU, gpus=(GpuReading(0, bus_id="00000000:08:00.0", memory_used_mib=0),))
    assert states([bus, other_bus]) == [(0, GpuState.UNAVAILABLE, False)]
    same_bus = ParsedOutput(OutputKind.CSV_GPU, gpus=(GpuReading(0, bus_id="00000000:07:00.0", memory_used_mib=0),))
    assert states([bus, same_bus]) == [(0, GpuState.IDLE, True)]
    # a third output cannot fill the untrusted memory back in
    third = ParsedOutput(OutputKind.LIST, gpus=(GpuReading(0, memory_used_mib=1),))
    assert build_snapshot([csv, table, third], NOW, "test").gpus[0].memory_used_mib is None


# ----------------------------------------------------------------------------- 3. used above total, 4. negative


def test_memory_used_above_total_is_unreadable_in_every_format() -> None:
    csv = parse_output("index, memory.used [MiB], memory.total [MiB]\n0, 500 MiB, 100 MiB\n1, 100 MiB, 100 MiB\n")
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in csv.gpus] == [(0, None, 100), (1, 100, 100)]
    assert csv.messages == ("GPU 0: memory used 500 MiB is above its total 100 MiB; memory use treated as unreadable",)
    table = parse_output(TABLE_V100.replace("5918MiB / 16160MiB", "19000MiB / 16160MiB", 1))
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in table.gpus][:2] == [(0, None, 16160),
                                                                                          (1, 0, 16160)]
    assert table.messages == ("GPU 0: memory used 19000 MiB is above its total 16160 MiB; memory use treated as "
                              "unreadable",)
    xml = parse_output(XML_H200.replace("<used>3193 MiB</used>", "<used>150000 MiB</used>", 1))
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in xml.gpus] == [(0, None, 143771)]
    assert xml.messages == ("GPU 0: memory used 150000 MiB is above its total 143771 MiB; memory use treated as "
                            "unreadable",)
    assert states([xml]) == [(0, GpuState.UNAVAILABLE, False)]


def test_negative_memory_is_not_memory() -> None:
    table = parse_output(TABLE_V100.replace("5918MiB", "-774MiB", 1))
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in table.gpus][:2] == [(0, None, 16160),
                                                                                          (1, 0, 16160)]
    assert table.messages == ("GPU 0: memory used '-774' is not a MiB amount; treated as unreadable",)
    csv = parse_output("index, memory.used [MiB], memory.total [MiB]\n0, -774 MiB, 100 MiB\n1, 5, -100\n")
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in csv.gpus] == [(0, None, 100), (1, 5, None)]
    assert csv.messages == ("GPU 0: memory used '-774 MiB' is not a MiB amount; treated as unreadable",
                            "GPU 1: memory total '-100' is not a MiB amount; treated as unreadable")
    xml = parse_output(XML_H200.replace("<used>3193 MiB</used>", "<used>-774 MiB</used>", 1))
    assert [(g.memory_used_mib, g.memory_total_mib) for g in xml.gpus] == [(None, 143771)]
    process = parse_output(TABLE_H200.replace("2566MiB", "-2566MiB", 1)).processes
    assert [(p.pid, p.used_memory_mib) for p in process] == [(702, 612)]  # the row is not a process row any more
    negative = ParsedOutput(OutputKind.NVML, gpus=(GpuReading(0, memory_used_mib=-1, memory_total_mib=-5),))
    snapshot = build_snapshot([negative], NOW, "test")
    assert (snapshot.gpus[0].memory_used_mib, snapshot.gpus[0].memory_total_mib) == (None, None)
    assert snapshot.warnings == ("GPU 0: memory total -5 MiB is negative; treated as unreadable",
                                 "GPU 0: memory used -1 MiB is negative; treated as unreadable")


@pytest.mark.parametrize(("text", "value"), [("-774MiB", None), ("-0", None), ("+5", None), ("1_000", None),
                                             ("1e3", None), ("9" * 12, 999_999_999_999), ("9" * 13, None),
                                             ("٣", None), ("3193 mib", 3193), (" 12.5 MiB ", 12)])
def test_parse_mib_is_strict_and_bounded(text: str, value: int | None) -> None:
    assert parse_mib(text) == value


@pytest.mark.parametrize(("text", "value"), [("4095", 4095), ("9" * 12, 999_999_999_999), ("9" * 13, None),
                                             ("9" * 5000, None), ("-1", None), ("٣", None)])
def test_parse_int_is_bounded(text: str, value: int | None) -> None:
    assert parse_int(text) == value


# ----------------------------------------------------------------------------- 5. XML: a missing <gpu> block


_XML_START = XML_H200.index("\t<gpu id=")
_XML_END = XML_H200.index("\t</gpu>\n") + len("\t</gpu>\n")
_XML_HEAD, _XML_BLOCK, _XML_TAIL = XML_H200[:_XML_START], XML_H200[_XML_START:_XML_END], XML_H200[_XML_END:]


def xml_gpu(minor: str, used: int) -> str:
    """The H200's <gpu> block as another GPU: minor number, bus id, uuid, memory and PIDs from ``used``."""
    return (_XML_BLOCK.replace("<minor_number>0</minor_number>", f"<minor_number>{minor}</minor_number>")
            .replace('id="00000000:00:06.0"', f'id="00000000:{used % 256:02X}:00.0"')
            .replace(UUID0, f"GPU-{used}")
            .replace("<used>3193 MiB</used>", f"<used>{used} MiB</used>", 1)
            .replace("<pid>701</pid>", f"<pid>{used}</pid>").replace("<pid>702</pid>", f"<pid>{used + 1}</pid>"))


def xml_of(attached: str | None, *blocks: str) -> str:
    count = f"<attached_gpus>{attached}</attached_gpus>" if attached is not None else ""
    return _XML_HEAD.replace("<attached_gpus>1</attached_gpus>", count) + "".join(blocks) + _XML_TAIL


def test_xml_fixtures_keep_their_indexes() -> None:
    assert gpus_of(XML_H200) == [(0, 3193, 143771)]
    t4 = (PUBLIC / "040-xml-t4-515.105.01.txt").read_text(encoding="utf-8")
    assert [g.index for g in parse_output(t4).gpus] == [0]


def test_xml_listing_every_attached_gpu_numbers_them_by_position_whatever_their_minor_numbers() -> None:
    text = xml_of("3", xml_gpu("2", 10), xml_gpu("0", 20), xml_gpu("1", 30))
    parsed = parse_output(text)
    assert [(g.index, g.memory_used_mib, g.uuid) for g in parsed.gpus] == [(0, 10, "GPU-10"), (1, 20, "GPU-20"),
                                                                           (2, 30, "GPU-30")]
    assert [(p.gpu_index, p.pid) for p in parsed.processes] == [(0, 10), (0, 11), (1, 20), (1, 21), (2, 30), (2, 31)]
    assert parsed.messages == ()
    no_count = parse_output(xml_of(None, xml_gpu("5", 10), xml_gpu("7", 20)))
    assert [g.index for g in no_count.gpus] == [0, 1]


def test_xml_missing_a_gpu_uses_minor_numbers_and_says_which_is_missing() -> None:
    lost = "Unable to determine the device handle for GPU0000:00:07.0: Unknown Error\n"
    parsed = parse_output(lost + xml_of("4", xml_gpu("0", 10), xml_gpu("2", 30), xml_gpu("3", 40)))
    assert [(g.index, g.memory_used_mib, g.uuid) for g in parsed.gpus] == [(0, 10, "GPU-10"), (2, 30, "GPU-30"),
                                                                           (3, 40, "GPU-40")]
    assert [(p.gpu_index, p.pid) for p in parsed.processes] == [(0, 10), (0, 11), (2, 30), (2, 31), (3, 40), (3, 41)]
    assert parsed.messages == ("Unable to determine the device handle for GPU0000:00:07.0: Unknown Error",
                               "nvidia-smi counts 4 GPUs but printed 3: GPU 1 missing (GPU indexes taken from "
                               "minor numbers)")


@pytest.mark.parametrize(("attached", "minors"), [
    ("3", ("N/A", "2")),  # Windows prints no minor number
    ("3", ("1", "1")),  # two GPUs claim one number
    ("3", ("0", "3")),  # no index 3 among 3 GPUs
    ("3", ("0", "x")),
    ("1", ("0", "1")),  # more GPUs than attached
    ("two", ("0", "1")),
    ("9" * 20, ("0", "1")),
])
def test_xml_with_gpus_missing_and_no_usable_minor_numbers_is_refused(attached: str, minors: tuple[str, str]) -> None:
    with pytest.raises(NvidiaSmiParseError, match="attached"):
        parse_output(xml_of(attached, *(xml_gpu(minor, 10 * (n + 1)) for n, minor in enumerate(minors))))


# ----------------------------------------------------------------------------- 6. bounded numbers, linear time

LONG = 16_000


def timed(text: str) -> tuple[float, list[tuple[int, int | None, int | None]]]:
    start = time.perf_counter()
    gpus = gpus_of(text)
    return time.perf_counter() - start, gpus


@pytest.mark.parametrize(("cell", "gpu0"), [
    ("1" * LONG + "MiB / 16160MiB", (0, None, 16160)),
    ("1" * LONG, (0, None, None)),  # no "MiB / MiB" pair at all
    ("5918MiB / " + "1" * LONG + "MiB", (0, 5918, None)),
    ("1" * LONG + "MiB / " + "2" * LONG, (0, None, None)),
])
def test_a_16000_digit_table_memory_cell_is_none_in_linear_time(cell: str, gpu0: tuple[int, None, None]) -> None:
    seconds, gpus = timed(TABLE_V100.replace("5918MiB / 16160MiB", cell, 1))
    assert seconds < 1.0  # ~3 to 10 s with the old quadratic pattern
    assert gpus[0] == gpu0 and gpus[1] == (1, 0, 16160)


def test_long_numbers_in_csv_and_xml_are_none_and_the_message_is_short() -> None:
    seconds, gpus = timed(f"index, memory.used [MiB], memory.total [MiB]\n0, {'9' * LONG} MiB, 100 MiB\n")
    assert seconds < 1.0 and gpus == [(0, None, 100)]
    parsed = parse_output(XML_H200.replace("<used>3193 MiB</used>", f"<used>{'7' * LONG} MiB</used>", 1))
    assert [(g.memory_used_mib, g.memory_total_mib) for g in parsed.gpus] == [(None, 143771)]
    assert parsed.messages == (f"GPU 0: memory used '{'7' * 24}'... ({LONG + 4} characters) is not a MiB amount; "
                               "treated as unreadable",)


def test_an_index_or_pid_beyond_int_limits_is_a_parse_error_or_skipped_never_a_value_error() -> None:
    with pytest.raises(NvidiaSmiParseError, match="GPU row with an unreadable index"):
        parse_output(TABLE_V100.replace("|   1  Tesla", "|   " + "1" * 5000 + "  Tesla", 1))
    with pytest.raises(NvidiaSmiParseError, match="no GPU index"):
        parse_output("index, memory.used\n" + "9" * 5000 + ", 5\n")
    processes = parse_output(TABLE_H200.replace(" 701 ", " " + "7" * 5000 + " ", 1)).processes
    assert [p.pid for p in processes] == [702]
    with pytest.raises(NvidiaSmiParseError):
        parse_output(f"GPU {'1' * 5000}: NVIDIA H200 (UUID: {UUID0})\n")


@pytest.mark.parametrize("case", ["gpu name", "process name", "prompt", "header unit", "command line"])
def test_long_lines_parse_in_linear_time(case: str) -> None:
    """Each of these took 0.7 to 6 s at 16,000 characters with the old patterns."""
    text, want = {
        "gpu name": (TABLE_V100.replace("Tesla V100-SXM2...  Off", "Tesla" + " " * LONG + "x", 1), (0, 5918, 16160)),
        "process name": (TABLE_H200.replace("python3", "python3" + " " * LONG + "x", 1), (0, 3193, 143771)),
        "prompt": ("$/" * (LONG // 2) + "\n" + TABLE_V100, (0, 5918, 16160)),
        "header unit": ("index, memory.used " + "[" * LONG + ", memory.used [MiB]\n0, 1, 5\n", (0, 5, None)),
        "command line": ("nvidia-smi " * (LONG // 11) + "--query-gpu=index,memory.used\n0, 5\n", (0, 5, None)),
    }[case]
    seconds, gpus = timed(text)
    assert seconds < 1.0
    assert gpus[0] == want


# ----------------------------------------------------------------------------- 7. control characters in XML


@pytest.mark.parametrize(("chars", "name"), [("\x01", "py\ufffdthon"), ("\x1b[31m", "py\ufffd[31mthon"),
                                             ("\x00", "py\ufffdthon"), ("\x7f\x1f", "py\x7f\ufffdthon"),
                                             ("\ufffe\ud800", "py\ufffd\ufffdthon")])
def test_a_control_character_in_a_process_name_keeps_the_gpus(chars: str, name: str) -> None:
    text = XML_H200.replace("<process_name>python3</process_name>", f"<process_name>py{chars}thon</process_name>", 1)
    parsed = parse_output(text)
    assert [(g.index, g.memory_used_mib, g.memory_total_mib) for g in parsed.gpus] == [(0, 3193, 143771)]
    assert [(p.pid, p.name) for p in parsed.processes] == [(701, name), (702, "python3")]


def test_tabs_and_newlines_in_xml_text_are_kept_and_entities_stay_refused() -> None:
    text = XML_H200.replace("<process_name>python3</process_name>", "<process_name>a\tb</process_name>", 1)
    assert parse_output(text).processes[0].name == "a\tb"
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "\x01aaaa">]><nvidia_smi_log><gpu>&a;</gpu>'
            "</nvidia_smi_log>")
    with pytest.raises(NvidiaSmiParseError, match="entities"):
        parse_output(bomb)


def test_control_characters_outside_xml_still_fail_only_as_parse_errors() -> None:
    with pytest.raises(NvidiaSmiParseError, match="malformed"):
        parse_output(XML_H200.replace("<process_name>", "<process\x01name>", 1))

