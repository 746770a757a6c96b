"""The float precision a regressor's network runs in, and which one this machine runs fastest.

A regressor is prepared (``train-regressor --precisions``) in one or more precisions: its
``float32`` variant, which every machine runs, and a ``bfloat16`` one whose heads were trained
on the features of the network computed in bfloat16 (``iou_maps.models.inference_graph``).
bfloat16 convolutions are fast only on processors with bfloat16 units, which oneDNN uses:
Intel AMX (``amx_bf16``) and AVX512-BF16 (``avx512_bf16``, also on AMD Zen 4); elsewhere
TensorFlow emulates them, slower than float32. The setting ``IOU_MAPS_PRECISION``
(``float32``, ``bfloat16`` or ``auto``: the fastest this machine has units for) chooses among
the prepared variants. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

from iou_maps.errors import RegressorError

#: The precisions a regressor can be prepared in, float32 (every machine's) first.
PRECISIONS = ("float32", "bfloat16")
#: Values of the ``precision`` setting: a precision, or ``auto``.
SETTINGS = (*PRECISIONS, "auto")
#: The processor flags (``/proc/cpuinfo``) of bfloat16 units, the fastest first.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


@cache  # once a process: every regressor_metadata() asks, and the flags never change
def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The processor's feature flags (empty where there is no ``/proc/cpuinfo``: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def bf16_units(cpuinfo: Path = CPUINFO) -> str | None:
    """The processor's bfloat16 units (``amx_bf16`` or ``avx512_bf16``), None without any."""
    flags = cpu_flags(cpuinfo)
    return next((flag for flag in BF16_FLAGS if flag in flags), None)


def machine_precisions(cpuinfo: Path = CPUINFO) -> tuple[str, ...]:
    """The precisions this machine runs fast, the fastest first (float32 always)."""
    return ("bfloat16", "float32") if bf16_units(cpuinfo) else ("float32",)


def check_precision(precision: str, allowed: Iterable[str] = PRECISIONS) -> str:
    """``precision`` if it is one of ``allowed`` (RegressorError, a ValueError, otherwise)."""
    allowed = tuple(allowed)
    if precision not in allowed:
        raise RegressorError(f"unknown precision {precision!r}; valid: {', '.join(allowed)}")
    return precision


def choose_precision(setting: str, prepared: Iterable[str], cpuinfo: Path = CPUINFO) -> str:
    """The precision to run a regressor prepared in ``prepared`` (float32 always among them):

    - ``auto``: the fastest this machine has units for among the prepared ones;
    - ``float32`` or ``bfloat16``: that one if prepared, else float32 (a regressor trained
      before this setting, or for float32 alone, runs everywhere as it is).
    """
    check_precision(setting, SETTINGS)
    available = set(prepared) | {"float32"}
    wanted = machine_precisions(cpuinfo) if setting == "auto" else (setting,)
    return next((p for p in wanted if p in available), "float32")
