"""Where and when a run happened: device name, versions, load average (the results' ``meta``)."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Optional

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:  # not Linux: platform's name will do
        pass
    return f"{name} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def triton_version() -> Optional[str]:
    try:
        import triton
    except Exception:  # Triton is optional on the CPU
        return None
    return triton.__version__


def run_meta(device: torch.device, command: str, dtype: str, quick: bool) -> dict:
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
        "python": platform.python_version(),
        "load_average_start": load_average(),
        "quick": quick,
        "dtype": dtype,
    }
