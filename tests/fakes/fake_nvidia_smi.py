"""A fake ``nvidia-smi`` for tests: prints ``-q -x`` XML like the real one, for GPUs described in
``$FAKE_SMI_DIR/gpus.json``, with every live process registered in ``$FAKE_SMI_DIR/procs/<pid>.json``
shown on the GPUs it names (as a real CUDA process appears on the GPUs of its CUDA_VISIBLE_DEVICES).

``$FAKE_SMI_DIR/mode`` switches behaviour: ``normal`` (default), ``hang``, ``fail`` (driver error,
exit 9), ``nodevices`` ("No devices were found", exit 6), ``garbage``, ``table`` (the plain table
instead of XML); ``$FAKE_SMI_DIR/calls`` counts runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape

import psutil


def alive(pid: int, created: float | None = None) -> bool:
    """Is the registered process still running (the same one: not a later process given its PID)?"""
    try:
        process = psutil.Process(pid)
        same = created is None or abs(process.create_time() - created) < 0.01
        return same and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main() -> int:
    sys.stdout.reconfigure(encoding="utf-8")  # type: ignore[attr-defined]  # as nvidia-smi writes, on Windows too
    base = Path(os.environ["FAKE_SMI_DIR"])
    with (base / "calls").open("a") as calls:
        calls.write(f"{os.getpid()} {' '.join(sys.argv[1:])}\n")
    mode = (base / "mode").read_text(encoding="utf-8").strip() if (base / "mode").exists() else "normal"
    delay = float((base / "delay").read_text(encoding="utf-8")) if (base / "delay").exists() else 0.0
    if delay:
        time.sleep(delay)
    if mode == "hang":
        time.sleep(3600)
    if mode == "fail":
        print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
              "Make sure that the latest NVIDIA driver is installed and running.")
        return 9
    if mode == "nodevices":  # a machine with the driver tools but no NVIDIA GPU
        print("No devices were found")
        return 6
    if mode == "garbage":
        sys.stdout.write("\x00\x01 this is not nvidia-smi output \xff\n")
        return 0
    gpus = json.loads((base / "gpus.json").read_text(encoding="utf-8"))
    procs: dict[int, list[dict[str, object]]] = {i: [] for i in range(len(gpus))}
    for entry in sorted((base / "procs").glob("*.json")):
        try:
            info = json.loads(entry.read_text(encoding="utf-8"))
        except ValueError:
            continue
        pid = int(info["pid"])
        if not alive(pid, info.get("created")):
            continue
        for gpu in info["gpus"]:
            if 0 <= int(gpu) < len(gpus):
                procs[int(gpu)].append(info)
    if mode == "table":
        return print_table(gpus, procs)
    print('<?xml version="1.0" ?>')
    print('<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">')
    print("<nvidia_smi_log>\n\t<driver_version>999.99</driver_version>")
    print(f"\t<attached_gpus>{len(gpus)}</attached_gpus>")
    for index, gpu in enumerate(gpus):
        used = int(gpu.get("base_used", 0)) + sum(int(p["mib"]) for p in procs[index])
        print(f'\t<gpu id="00000000:{index + 1:02X}:00.0">')
        print(f"\t\t<product_name>{escape(gpu.get('name', 'Fake GPU'))}</product_name>")
        print(f"\t\t<uuid>GPU-fake-{index:04d}</uuid>")
        print("\t\t<mig_devices>\n\t\t\tNone\n\t\t</mig_devices>")
        print(f"\t\t<fb_memory_usage>\n\t\t\t<total>{gpu.get('total', 24564)} MiB</total>\n"
              f"\t\t\t<reserved>300 MiB</reserved>\n\t\t\t<used>{used} MiB</used>\n\t\t</fb_memory_usage>")
        print("\t\t<processes>")
        for p in procs[index]:
            print("\t\t\t<process_info>\n\t\t\t\t<gpu_instance_id>N/A</gpu_instance_id>"
                  f"\n\t\t\t\t<pid>{p['pid']}</pid>\n\t\t\t\t<type>C</type>"
                  f"\n\t\t\t\t<process_name>{escape(str(p['name']))}</process_name>"
                  f"\n\t\t\t\t<used_memory>{p['mib']} MiB</used_memory>\n\t\t\t</process_info>")
        print("\t\t</processes>\n\t</gpu>")
    print("</nvidia_smi_log>")
    return 0


def print_table(gpus: list[dict[str, object]], procs: dict[int, list[dict[str, object]]]) -> int:
    print("+-----------------------------------------------------------------------------------------+")
    print("| NVIDIA-SMI 999.99                 Driver Version: 999.99         CUDA Version: 13.0     |")
    print("|=========================================+========================+======================|")
    print("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |")
    for index, gpu in enumerate(gpus):
        used = int(gpu.get("base_used", 0)) + sum(int(p["mib"]) for p in procs[index])
        print(f"|  {index:>2}  Fake GPU                        On  |   00000000:{index + 1:02X}:00.0 Off |"
              "                    0 |")
        print(f"| N/A   30C    P8             20W /  350W |  {used:>6}MiB / {gpu.get('total', 24564):>6}MiB |"
              "      0%      Default |")
        print("+-----------------------------------------+------------------------+----------------------+")
    print("| Processes:                                                                              |")
    print("|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |")
    print("|=========================================================================================|")
    for index in procs:
        for p in procs[index]:
            print(f"|  {index:>3}   N/A  N/A  {p['pid']:>14}      C   {str(p['name'])[:34]:<34} {p['mib']:>6}MiB |")
    print("+-----------------------------------------------------------------------------------------+")
    return 0


if __name__ == "__main__":
    sys.exit(main())
