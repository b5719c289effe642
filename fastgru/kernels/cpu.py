"""The one place that reads the CPU and picks the kernels' variants, once, at import.

Everything the kernels decide by the machine they run on is decided here, from LLVM's view of
the CPU Numba compiles for (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when compiling for another
one) and from the OS:

    VECTOR_BYTES        64 with AVX-512, else 32: the width of simd.Vector
    FOUR_ROW_TILES      the products' register tiles (products.matvec_vectors)
    MASK_IN_ASSEMBLY    how widened bfloat16 weights are masked (simd._upper_halves)
    BF16_DOT_PRODUCTS   vdpbf16ps (AVX512_BF16)
    AMX                 AMX-BF16 tiles, and Linux granted the process their registers
    VNNI                vpdpbusd (AVX512_VNNI), for int8 weights
    BF16_PATHS          bfloat16 kernel variants this CPU runs, the fastest last (bfloat16.py)
    INT8_PATHS          int8 kernel variants this CPU runs, the fastest last (int8.py)
    L1_BYTES, L2_BYTES, CACHE_LINE_BYTES   cache sizes

The *_PATHS are what a model may be packed for; the last of each is the default. Tools and
tests that compare variants name one by argument (PackedWeights.pack(..., kernel_path=...),
GRU(..., kernel_path=...), int8_pack.pack(..., path=...)); nothing here is assigned from outside.
"""

from __future__ import annotations

import ctypes
import glob
import math
import os
import platform
import sys

import llvmlite.binding as llvm_binding
import numpy as np
from numba.core import config


def has_feature(feature: str) -> bool:
    """Whether the CPU Numba compiles for has an LLVM feature ("avx512f")."""
    if config.CPU_NAME and config.CPU_NAME != "host":  # NUMBA_CPU_NAME: compiling for another CPU
        return f"+{feature}" in (config.CPU_FEATURES or "").split(",")
    try:
        return bool(llvm_binding.get_host_cpu_features().get(feature))
    except RuntimeError:  # LLVM cannot read this host's features
        return False


def _request_tile_state() -> bool:
    """Ask Linux for the AMX tile state (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); without it the
    first tile instruction kills the process. Granted for the whole process, threads included."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


# 64 with AVX-512, else 32 (AVX2; older CPUs split them)
VECTOR_BYTES = 64 if has_feature("avx512f") else 32

# A 4-row tile of the products keeps 16 vector sums, 4 weight vectors and a broadcast in
# registers: it needs AVX-512's 32 vector registers. With AVX2's 16 it spills, and a 2-row tile's
# 8 sums are just as many as two multiply-add units of 4 cycles' latency keep busy, with no
# slack; so AVX2 takes 6 rows times half a panel (12 sums, 2 weight vectors, a broadcast: 15
# registers). On AVX-512 the half-panel tiles were slower. The measurements: bench/RESULTS.md,
# "Thresholds in the code", Kernels (register tiles).
FOUR_ROW_TILES = VECTOR_BYTES == 64

# The AND that widens bfloat16 weights as a vandps of our own (see simd._upper_halves), on every
# CPU with AVX
MASK_IN_ASSEMBLY = has_feature("avx")

# vdpbf16ps on 512-bit vectors (Intel Cooper Lake and later, AMD Zen 4 and later)
BF16_DOT_PRODUCTS = VECTOR_BYTES == 64 and has_feature("avx512bf16")

# AMX tiles (Intel Sapphire Rapids and later). A panel is 64 columns (four 16-column tiles) only
# with AVX-512's 16-lane vectors, which every AMX CPU has; Linux must grant the tile registers.
AMX = (VECTOR_BYTES == 64 and has_feature("amx-tile") and has_feature("amx-bf16")
       and _request_tile_state())

# vpdpbusd on 512-bit vectors (Intel Cascade Lake and later, AMD Zen 4 and later)
VNNI = VECTOR_BYTES == 64 and has_feature("avx512vnni")

BF16_PATHS = ("widen",) + (("dot",) if BF16_DOT_PRODUCTS else ()) + (("tiles",) if AMX else ())
INT8_PATHS = ("widen",) + (("vnni",) if VNNI else ())


def kernel_path(precision: str, path: str | None = None) -> str | None:
    """The kernel variant of a model of `precision`: `path` checked against the variants this
    CPU runs (BF16_PATHS for "bfloat16", INT8_PATHS for "int8"), or the fastest when None;
    None for float32 and float64, which have one kernel each, whatever `path` says."""
    paths = {"bfloat16": BF16_PATHS, "int8": INT8_PATHS}.get(precision)
    if paths is None:
        return None
    if path is None:
        return paths[-1]
    if path not in paths:
        raise ValueError(f"kernel_path must be one of {paths} for {precision} on this CPU, "
                         f"got {path!r}")
    return path


_SYSFS_CACHE = "/sys/devices/system/cpu/cpu0/cache"  # one index* folder per cache of cpu0


def _cache_bytes(level: int, default: int, root=_SYSFS_CACHE) -> int:
    """Size of cpu0's data (or unified) cache of `level`, from sysfs; `default` where it does
    not say, or says 0."""
    for index in sorted(glob.glob(os.path.join(root, "index*"))):
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
            size = int(text.rstrip("KMG")) * scale
        except ValueError:
            continue
        if size > 0:  # some virtual machines say 0
            return size
    return default


def _cache_line_bytes(default: int, root=_SYSFS_CACHE) -> int:
    """The cache line size the OS gives, if it is a power of two of at least 16 bytes (some
    virtual machines say 0), else `default`."""
    try:
        with open(os.path.join(root, "index0", "coherency_line_size")) as f:
            size = int(f.read())
    except (OSError, ValueError):
        return default
    return size if size >= 16 and size & (size - 1) == 0 else default


L1_BYTES = _cache_bytes(1, 32 << 10)  # per core, data; bench/report.py's limits
L2_BYTES = _cache_bytes(2, 1 << 20)  # per core; 1 MiB where the OS does not say
CACHE_LINE_BYTES = _cache_line_bytes(64)


def empty_aligned(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty(shape, dtype) starting on a cache line (NumPy aligns to 16 bytes only).

    For the weights and scratch the kernels stream: rows of whole vectors then never straddle
    two lines, which costs every such load twice the cache's bandwidth. Allocates a little
    slower than np.empty: for arrays made once, not per call. The measurements: bench/RESULTS.md,
    "Thresholds in the code", Kernels (aligned arrays).
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + CACHE_LINE_BYTES, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE_BYTES
    return raw[start:start + size].view(dtype).reshape(shape)
