"""GPU telemetry (utilization, temperature, power draw and limit, fan) from every nvidia-smi output,
checked against the values printed in real recordings; every placeholder, error marker and junk value
gives None (never an exception, never a made-up number); and the status document carries them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuwarden.classify import classify
from gpuwarden.probe.assemble import build_snapshot
from gpuwarden.probe.mock import MockSource
from gpuwarden.probe.parse import parse_output
from gpuwarden.probe.parse_common import parse_celsius, parse_percent, parse_watts
from gpuwarden.records import GpuReading, OutputKind, ParsedOutput, Snapshot
from tests.conftest import H200, PUBLIC, REPO
from tests.test_cli import run_cli
from tests.test_parse import sidecar_columns

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
FIELDS = ("utilization_percent", "temperature_c", "power_draw_w", "power_limit_w", "fan_percent")
Telemetry = tuple[int | None, int | None, float | None, float | None, int | None]
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def telemetry(gpu: GpuReading) -> Telemetry:
    return gpu.utilization_percent, gpu.temperature_c, gpu.power_draw_w, gpu.power_limit_w, gpu.fan_percent


def parsed(path: Path) -> ParsedOutput:
    sidecar = path.with_suffix(".json")
    columns = sidecar_columns(json.loads(sidecar.read_text(encoding="utf-8"))) if sidecar.is_file() else None
    return parse_output(path.read_text(encoding="utf-8"), columns)


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- recorded outputs

# (GPU-Util, Temp, Pwr usage, Pwr cap, Fan) exactly as each recording prints them.
RECORDED: dict[str, tuple[Path, OutputKind, list[Telemetry]]] = {
    "p100 table": (PUBLIC / "002-p100x4-384.145-busy.txt", OutputKind.TABLE, [
        (8, 61, 168.0, 250.0, None), (6, 43, 167.0, 250.0, None), (19, 49, 143.0, 250.0, None),
        (3, 48, 136.0, 250.0, None)]),
    "v100 table": (PUBLIC / "008-v100x4-450.57-one-busy.txt", OutputKind.TABLE, [
        (56, 60, 299.0, 300.0, None), (0, 34, 56.0, 300.0, None), (0, 32, 57.0, 300.0, None),
        (0, 36, 59.0, 300.0, None)]),
    "v100s table": (PUBLIC / "013-v100s-x8-535.171.04-one-busy.txt", OutputKind.TABLE, [
        (0, temp, draw, 250.0, None) for temp, draw in
        ((42, 38.0), (38, 26.0), (39, 25.0), (43, 29.0), (38, 25.0), (38, 25.0), (39, 28.0), (35, 24.0))]),
    "rtx3080 windows table": (PUBLIC / "017-rtx3080-576.80-windows-cg.txt", OutputKind.TABLE, [
        (3, 54, 23.0, 340.0, 0)]),
    "l40s table": (PUBLIC / "019-l40s-x4-580.119.02-mixed.txt", OutputKind.TABLE, [
        (0, 40, 82.0, 350.0, None), (0, 40, 86.0, 350.0, None), (0, 30, 24.0, 350.0, None),
        (0, 29, 25.0, 350.0, None)]),
    "h100 MIG table (GPU-Util N/A)": (PUBLIC / "024-h100-mig-590.48.01-load.txt", OutputKind.TABLE, [
        (None, 52, 432.0, 700.0, None)]),
    "gtx1060 table (cap N/A)": (PUBLIC / "044-gtx1060-376.51-windows-insufficient-permissions.txt",
                                OutputKind.TABLE, [(0, 49, 20.0, None, None)]),
    "h200 busy table": (H200 / "busy_table.txt", OutputKind.TABLE, [(0, 36, 122.0, 700.0, None)]),
    "h200 table, other user": (H200 / "busy_table_as_other_user.txt", OutputKind.TABLE, [
        (0, 36, 122.0, 700.0, None)]),
    "h200 idle table": (H200 / "idle_table.txt", OutputKind.TABLE, [(0, 35, 94.0, 700.0, None)]),
    "t4 xml (power_readings)": (PUBLIC / "040-xml-t4-515.105.01.txt", OutputKind.XML, [
        (0, 40, 26.78, 70.0, None)]),
    "h200 busy xml (average_power_draw)": (H200 / "busy_xml.txt", OutputKind.XML, [(0, 36, 122.99, 700.0, None)]),
    "h200 idle xml": (H200 / "idle_xml.txt", OutputKind.XML, [(0, 35, 81.3, 700.0, None)]),
    "h200 busy csv with units": (H200 / "busy_q_full.txt", OutputKind.CSV_GPU, [(0, 36, 122.98, 700.0, None)]),
    "h200 idle csv with units": (H200 / "idle_q_full.txt", OutputKind.CSV_GPU, [(0, 35, 86.67, 700.0, None)]),
    "titan x csv, noheader, nounits": (PUBLIC / "032-csv-gpu-titanx-x8-noheader-nounits.txt", OutputKind.CSV_GPU, [
        (util, temp, None, None, None) for temp, util in
        ((25, 0), (54, 86), (55, 85), (58, 60), (55, 84), (54, 83), (56, 83), (55, 82))]),
    "h200 csv without telemetry columns": (H200 / "busy_q_min_header.txt", OutputKind.CSV_GPU, [
        (None, None, None, None, None)]),
}


@pytest.mark.parametrize("case", list(RECORDED))
def test_recorded_output_telemetry(case: str) -> None:
    path, kind, expected = RECORDED[case]
    output = parsed(path)
    assert output.kind is kind
    assert [telemetry(gpu) for gpu in output.gpus] == expected
    assert all(isinstance(value, int) and not isinstance(value, bool)
               for gpu in output.gpus for value in (gpu.utilization_percent, gpu.temperature_c, gpu.fan_percent)
               if value is not None)


# ----------------------------------------------------------------------------- table: placeholders, layout

RTX3080 = text_of(PUBLIC / "017-rtx3080-576.80-windows-cg.txt")
RTX3080_ROW = "|  0%   54C    P8             23W /  340W |     665MiB /  10240MiB |      3%      Default |"


@pytest.mark.parametrize(("row", "expected"), [
    ("| N/A   N/A    P8             N/A /  N/A |     665MiB /  10240MiB |     N/A      Default |",
     (None, None, None, None, None)),
    ("| ERR!  ERR!   ERR!          ERR! / ERR! |     665MiB /  10240MiB |    ERR!      Default |",
     (None, None, None, None, None)),
    ("| [Unknown Error]  [N/A]  P8  [Not Supported] / [N/A] |     665MiB /  10240MiB |  [N/A]  Default |",
     (None, None, None, None, None)),
    ("| 45%   91C    P2            310W /  350W |     665MiB /  10240MiB |    100%      Default |",
     (100, 91, 310.0, 350.0, 45)),
    ("| 999%  400C   P0            -50W / 99999W |     665MiB /  10240MiB |    250%      Default |",
     (None, None, None, None, None)),
    ("|  0%   54C    P8             23W /    0W |     665MiB /  10240MiB |     -3%      Default |",
     (None, 54, 23.0, None, 0)),
    ("|  30   54    P8             23 /  340 |     665MiB /  10240MiB |      3      Default |",
     (None, None, None, None, None)),  # a table value without its unit is not trusted
    # A row of another layout (no fan value): read by the header's labels, each value needs its unit,
    # so nothing shifts into the wrong field.
    ("|  54C    P8             23W /  340W |     665MiB /  10240MiB |      3%      Default |",
     (3, None, None, None, None)),
])
def test_table_placeholders_and_junk_give_none(row: str, expected: Telemetry) -> None:
    assert RTX3080_ROW in RTX3080
    output = parse_output(RTX3080.replace(RTX3080_ROW, row))
    assert [telemetry(gpu) for gpu in output.gpus] == [expected]
    assert output.gpus[0].memory_used_mib == 665 and output.messages == ()


def test_table_without_its_header_row_reads_no_telemetry() -> None:
    header = "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |\n"
    assert header in RTX3080
    gpu = parse_output(RTX3080.replace(header, "")).gpus[0]
    assert telemetry(gpu) == (None, None, None, None, None) and gpu.memory_used_mib == 665


# ----------------------------------------------------------------------------- XML: which power reading

BUSY_XML = text_of(H200 / "busy_xml.txt")
T4_XML = text_of(PUBLIC / "040-xml-t4-515.105.01.txt")
AVERAGE = "<average_power_draw>122.99 W</average_power_draw>"
INSTANT = "<instant_power_draw>122.90 W</instant_power_draw>"


@pytest.mark.parametrize(("edits", "draw", "limit"), [
    ([(AVERAGE, "<power_draw>130.50 W</power_draw>" + AVERAGE)], 130.5, 700.0),  # plain power_draw first
    ([(AVERAGE, "<average_power_draw>N/A</average_power_draw>")], 122.9, 700.0),  # then instant
    ([(AVERAGE, ""), (INSTANT, "<instant_power_draw>[Not Supported]</instant_power_draw>")], None, 700.0),
    ([("<current_power_limit>700.00 W</current_power_limit>", "<current_power_limit>ERR!</current_power_limit>")],
     122.99, None),
    ([("<gpu_power_readings>", "<gpu_power_readings_gone>"), ("</gpu_power_readings>", "</gpu_power_readings_gone>")],
     None, None),  # the memory's and the module's readings are never the GPU's
])
def test_xml_power_draw_prefers_plain_then_average_then_instant(
        edits: list[tuple[str, str]], draw: float | None, limit: float | None) -> None:
    text = BUSY_XML
    for old, new in edits:
        assert text.count(old) == 1
        text = text.replace(old, new)
    gpu = parse_output(text).gpus[0]
    assert (gpu.power_draw_w, gpu.power_limit_w, gpu.memory_used_mib) == (draw, limit, 3193)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("<fan_speed>N/A</fan_speed>", "<fan_speed>45 %</fan_speed>", (0, 40, 26.78, 70.0, 45)),
    ("<enforced_power_limit>70.00 W</enforced_power_limit>",
     "<enforced_power_limit>65.00 W</enforced_power_limit>", (0, 40, 26.78, 65.0, None)),
    ("<enforced_power_limit>70.00 W</enforced_power_limit>", "", (0, 40, 26.78, 70.0, None)),
    ("<gpu_util>0 %</gpu_util>", "<gpu_util>[Unknown Error]</gpu_util>", (None, 40, 26.78, 70.0, None)),
    ("<gpu_temp>40 C</gpu_temp>", "<gpu_temp>-12 C</gpu_temp>", (0, None, 26.78, 70.0, None)),
    ("<power_draw>26.78 W</power_draw>", "<power_draw>ERR!</power_draw>", (0, 40, None, 70.0, None)),
])
def test_xml_older_power_readings_and_placeholders(old: str, new: str, expected: Telemetry) -> None:
    assert T4_XML.count(old) == 1
    assert telemetry(parse_output(T4_XML.replace(old, new)).gpus[0]) == expected


# ----------------------------------------------------------------------------- CSV

CSV_HEADER = ("index, memory.used [MiB], utilization.gpu [%], temperature.gpu, power.draw [W], power.limit [W], "
              "fan.speed [%]\n")


def test_csv_placeholders_junk_and_absurd_values_give_none() -> None:
    rows = ["0, 5 MiB, 7 %, 41, 55.25 W, 300.00 W, 30 %",
            "1, 5 MiB, [N/A], [N/A], [N/A], [N/A], [N/A]",
            "2, 5 MiB, [Not Supported], [Not Supported], [Not Supported], [Not Supported], [Not Supported]",
            "3, 5 MiB, ERR!, [Unknown Error], , N/A, [Requested functionality has been deprecated]",
            "4, 5 MiB, abc, 65535, 1e3 W, 99999 W, 7 C",
            "5, 5 MiB, 101 %, -1, -5 W, 0 W, 201 %",
            "6, 5 MiB, nan, inf, 12.5 MiB, 300 V, 9999999999999"]
    output = parse_output(CSV_HEADER + "\n".join(rows))
    assert [telemetry(gpu) for gpu in output.gpus] == [(7, 41, 55.25, 300.0, 30)] + [(None,) * 5] * 6
    assert [gpu.memory_used_mib for gpu in output.gpus] == [5] * 7 and output.messages == ()


@pytest.mark.parametrize(("header", "row", "draw", "limit"), [
    ("power.draw.average [W], power.draw.instant [W], enforced.power.limit [W], power.limit [W]",
     "81.30 W, 81.18 W, 650.00 W, 700.00 W", 81.3, 650.0),
    ("power.draw [W], power.draw.average [W], power.draw.instant [W], power.limit [W]",
     "[N/A], [N/A], 81.18 W, 700.00 W", 81.18, 700.0),
    ("power.draw [W], gpu.power.draw.average [W], enforced.power.limit [W], power.limit [W]",
     "90.00 W, 81.30 W, [N/A], 700.00 W", 90.0, 700.0),
    ("gpu.power.draw.instant, gpu.power.current_limit, gpu.power.requested_limit", "12, 200, 250", 12.0, 200.0),
])
def test_csv_power_columns_in_order_of_preference(header: str, row: str, draw: float, limit: float) -> None:
    gpu = parse_output(f"index, memory.used [MiB], {header}\n0, 1 MiB, {row}\n").gpus[0]
    assert (gpu.power_draw_w, gpu.power_limit_w, gpu.memory_used_mib) == (draw, limit, 1)


@PROPERTY
@given(st.integers(0, 100), st.integers(0, 150), st.integers(0, 1_000_000), st.integers(1, 1_000_000),
       st.integers(0, 200), st.booleans())
def test_csv_reads_any_sane_value_exactly(util: int, temp: int, draw_cw: int, limit_cw: int, fan: int,
                                         units: bool) -> None:
    w, pct = (" W", " %") if units else ("", "")
    row = f"0, 1 MiB, {util}{pct}, {temp}, {draw_cw / 100:.2f}{w}, {limit_cw / 100:.2f}{w}, {fan}{pct}"
    gpu = parse_output(CSV_HEADER + row).gpus[0]
    assert telemetry(gpu) == (util, temp, round(draw_cw / 100, 2), round(limit_cw / 100, 2), fan)


# ----------------------------------------------------------------------------- junk never raises

JUNK = st.one_of(
    st.text(st.characters(blacklist_characters="|,<>&\r\n", blacklist_categories=("Cs",)), max_size=30),
    st.sampled_from(["N/A", "[N/A]", "[Not Supported]", "ERR!", "[Unknown Error]", "", "-1", "-0", "nan", "inf",
                     "1e400", "9" * 4301, "65535", "4294967295", "18446744073709551615", "1.5.5", "+5", "0x10"]),
    st.integers(-10**15, 10**15).map(str).flatmap(lambda n: st.sampled_from([n, n + "%", n + "C", n + " W"])),
)


def assert_sane(gpu: GpuReading) -> None:
    for value, high in ((gpu.utilization_percent, 100), (gpu.temperature_c, 150), (gpu.fan_percent, 200)):
        assert value is None or (type(value) is int and 0 <= value <= high), gpu
    assert gpu.power_draw_w is None or (type(gpu.power_draw_w) is float and 0 <= gpu.power_draw_w <= 10_000), gpu
    assert gpu.power_limit_w is None or (type(gpu.power_limit_w) is float and 0 < gpu.power_limit_w <= 10_000), gpu


@PROPERTY
@given(JUNK)
def test_number_helpers_never_raise(junk: str) -> None:
    for value in (parse_percent(junk), parse_percent(junk, 200), parse_celsius(junk),
                  parse_celsius(junk, unit_required=True), parse_watts(junk), parse_watts(junk, zero_allowed=False)):
        assert value is None or (0 <= value <= 10_000 and value == value)


@PROPERTY
@given(st.lists(JUNK, min_size=6, max_size=6))
def test_junk_in_the_fields_of_every_format_gives_none_or_sane_numbers(junk: list[str]) -> None:
    fan, temp, draw, cap, util, extra = junk
    row = f"| {fan}   {temp}    P8             {draw} /  {cap} |     665MiB /  10240MiB |   {util}   Default |"
    table = parse_output(RTX3080.replace(RTX3080_ROW, row))
    csv = parse_output(CSV_HEADER + f"0, 5 MiB, {util}, {temp}, {draw}, {cap}, {fan}")
    xml = parse_output(BUSY_XML.replace("<gpu_util>0 %</gpu_util>", f"<gpu_util>{util}</gpu_util>")
                       .replace("<gpu_temp>36 C</gpu_temp>", f"<gpu_temp>{temp}</gpu_temp>")
                       .replace(AVERAGE, f"<average_power_draw>{draw}</average_power_draw>")
                       .replace(INSTANT, f"<instant_power_draw>{extra}</instant_power_draw>")
                       .replace("<current_power_limit>700.00 W", f"<current_power_limit>{cap}")
                       .replace("<fan_speed>N/A", f"<fan_speed>{fan}"))
    assert [g.index for g in table.gpus] == [0]
    assert [(g.index, g.memory_used_mib) for g in csv.gpus] == [(0, 5)]
    assert [(g.index, g.memory_used_mib) for g in xml.gpus] == [(0, 3193)]
    for gpu in (*table.gpus, *csv.gpus, *xml.gpus):
        assert_sane(gpu)


# ----------------------------------------------------------------------------- merged outputs

def test_outputs_complete_each_others_telemetry_and_the_first_wins() -> None:
    memory_only, table, full = (parsed(H200 / name) for name in ("busy_q_min_header.txt", "busy_table.txt",
                                                                 "busy_q_full.txt"))
    merged = build_snapshot([memory_only, table], NOW, "test").gpus
    assert [(g.memory_used_mib, *telemetry(g)) for g in merged] == [(3193, 0, 36, 122.0, 700.0, None)]
    merged = build_snapshot([full, table], NOW, "test").gpus
    assert [telemetry(g) for g in merged] == [(0, 36, 122.98, 700.0, None)]


def test_untrusted_gpu_readings_carry_no_telemetry() -> None:
    other = ParsedOutput(OutputKind.CSV_GPU, gpus=(GpuReading(0, uuid="GPU-someone-else", temperature_c=80,
                                                              fan_percent=50, memory_used_mib=1),))
    snapshot = build_snapshot([parsed(H200 / "busy_q_full.txt"), other], NOW, "test")
    assert [(g.memory_used_mib, *telemetry(g)) for g in snapshot.gpus] == [(None, None, None, None, None, None)]
    twice = parse_output("index, memory.used, temperature.gpu, fan.speed\n0, 1 MiB, 40, 30 %\n0, 1 MiB, 41, 30 %\n")
    assert [(g.memory_used_mib, g.temperature_c, g.fan_percent) for g in twice.gpus] == [(None, None, 30)]


# ----------------------------------------------------------------------------- the status document

def test_status_document_from_the_mock_source_carries_the_fields_after_memory() -> None:
    snapshot = MockSource(paths=[PUBLIC / "017-rtx3080-576.80-windows-cg.txt"], clock=lambda: NOW).snapshot()
    gpu = json.loads(json.dumps(classify(snapshot, 30).to_dict()))["gpu_status"][0]
    assert {name: gpu[name] for name in FIELDS} == {"utilization_percent": 3, "temperature_c": 54,
                                                    "power_draw_w": 23.0, "power_limit_w": 340.0, "fan_percent": 0}
    keys = list(gpu)
    assert keys[keys.index("memory_total_mib") + 1:][:5] == list(FIELDS)


def test_status_json_of_the_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                tmp_path: Path) -> None:
    def gpus(env: dict[str, str]) -> list[list[object]]:
        code, out, _ = run_cli(["status", "--json"], env, capsys, monkeypatch, tmp_path)
        assert code == 0
        return [[gpu[name] for name in FIELDS] for gpu in json.loads(out)["gpu_status"]]

    assert gpus({"GPUWARDEN_MOCK_SMI": str(H200 / "busy_xml.txt")}) == [[0, 36, 122.99, 700.0, None]]
    assert gpus({"GPUWARDEN_MOCK_SMI": str(REPO / "data" / "gpu.txt")}) == [
        [0, 38, 12.0, 450.0, 0], [0, 41, 19.0, 450.0, 0]]
    # The seed's two-column CSV reports no telemetry: every field is there, and null.
    assert gpus({"GPUWARDEN_MOCK_SMI_TEXT": "0, 1 MiB\n1, 363 MiB"}) == [[None] * 5, [None] * 5]


def test_unreadable_status_shows_no_stale_telemetry() -> None:
    last = (GpuReading(0, name="H200", memory_total_mib=143771, utilization_percent=90, temperature_c=70,
                       power_draw_w=500.0, power_limit_w=700.0, fan_percent=40),)
    snapshot = Snapshot(taken_at=NOW, source="test", error="GPU is lost", unreadable=True, last_good_gpus=last)
    gpu = classify(snapshot, 30).to_dict()["gpu_status"][0]
    assert gpu["state"] == "unavailable" and [gpu[name] for name in FIELDS] == [None] * 5
