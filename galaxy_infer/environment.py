"""What produced a catalog on this machine: the versions of the code that shape its numbers, and the CPU's int8 kernels.

A catalog is a scientific result: its file metadata and run summary record these so two nodes
installed on different days, or with different CPUs, can be told apart. Also where this machine
keeps files it can make again (fetched models, ledger indexes).
"""
from __future__ import annotations

import functools
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

VERSIONED = ("galaxy-infer", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow", "astropy", "pyarrow")
"""Packages whose version can change a catalog's numbers or bytes (onnxruntime is one of the two wheels)."""


def cache_folder(kind: str) -> Path:
    """Where this machine keeps files of ``kind`` that can be made again: ``$GALAXY_INFER_CACHE/<kind>``,
    else ``~/.cache/galaxy-infer/<kind>``."""
    return Path(os.environ.get("GALAXY_INFER_CACHE") or Path.home() / ".cache" / "galaxy-infer") / kind


@functools.cache
def versions() -> dict[str, str]:
    """Installed versions of :data:`VERSIONED`, by distribution name; absent ones are left out."""
    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux names them (``/proc/cpuinfo``); empty where that file does not exist."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_kernels(flags: set[str] | None = None, machine: str | None = None) -> str:
    """Which of onnxruntime's x86 u8s8 kernels this CPU gets, and whether its sums are exact.

    Without VNNI (AVX2 only) the kernel adds pairs of products in 16 bits with saturation; the
    bundled int8 model's weights are quantized to 7 bits so no pair saturates (training/quantize.py),
    and it gives the same numbers on every kind below.
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return f"{machine}: onnxruntime's int8 kernels for this architecture (not x86)"
    flags = cpu_flags() if flags is None else flags
    if "amx_int8" in flags:
        return "AMX (exact 32-bit sums)"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI (exact 32-bit sums)"
    if "avx_vnni" in flags:
        return "AVX-VNNI (exact 32-bit sums)"
    if "avx2" in flags:
        return "AVX2 without VNNI (16-bit pair sums that saturate; 7-bit weights stay exact)"
    if flags:
        return "SSE (exact 32-bit sums)"
    return "unknown (no /proc/cpuinfo)"
