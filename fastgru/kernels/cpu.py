"""What the kernels need to know about the CPU they run on, read from the OS at import."""

from __future__ import annotations

import glob
import os


def _cache_bytes(level: int, default: int) -> int:
    """Size of cpu0's data (or unified) cache of `level`, from sysfs; `default` elsewhere."""
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(index, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(index, "type")) as f:
                if f.read().strip() not in ("Data", "Unified"):
                    continue
            with open(os.path.join(index, "size")) as f:
                text = f.read().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            return int(text.rstrip("KMG")) * scale
        except ValueError:
            continue
    return default


L2_BYTES = _cache_bytes(2, 1 << 20)  # per core; 1 MiB where the OS does not say
