"""How TensorFlow runs in this process, chosen by what the process does (train or only infer).

TensorFlow reads its settings from the environment once, when it is imported, so a process
chooses before that and the choice then holds for its life (and passes to its children):

- **oneDNN** (``TF_ENABLE_ONEDNN_OPTS``): its kernels corrupted the heap in ``model.fit`` on AMD
  EPYC (AVX-512) machines ("corrupted double-linked list", then SIGABRT/SIGSEGV), so a process
  that trains keeps them off. For inference they give the same outputs (max abs difference
  ~1e-7 on the regressor) at 1.4-1.7x the speed, so a process that only infers turns them on.
- **Thread pools** (``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS``): the regressor's
  UNet has few channels, so splitting each of its small ops over the cores (TensorFlow's
  default) leaves them waiting on each other; an inference process runs every op on one core
  and as many independent branches as it has cores (see ``Regressor``'s ``branches``).

A value the user sets in the environment always wins.
"""

from __future__ import annotations

import os
import sys

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
INTRA_OP = "TF_NUM_INTRAOP_THREADS"
INTER_OP = "TF_NUM_INTEROP_THREADS"
#: Names the variables above that this package set (not the user), for child processes: a
#: process started by a training process may still choose inference.
CHOSEN_BY_PACKAGE = "IOU_MAPS_TF_DEFAULTS"


def _ours() -> set[str]:
    return set(filter(None, os.environ.get(CHOSEN_BY_PACKAGE, "").split(",")))


def user_set(name: str) -> bool:
    """Whether the user (not this package) gave ``name`` a value."""
    return name in os.environ and name not in _ours()


def tensorflow_imported() -> bool:
    """TensorFlow reads these settings at import: after it, they no longer change anything."""
    return "tensorflow" in sys.modules


def _choose(values: dict[str, str]) -> None:
    ours = _ours()
    for name, value in values.items():
        if not user_set(name):
            os.environ[name] = value
            ours.add(name)
    os.environ[CHOSEN_BY_PACKAGE] = ",".join(sorted(ours))


def _unset(names: tuple[str, ...]) -> None:
    ours = _ours()
    for name in names:
        if name in ours:
            os.environ.pop(name, None)
            ours.discard(name)
    os.environ[CHOSEN_BY_PACKAGE] = ",".join(sorted(ours))


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def training_process() -> bool:
    """Choose TensorFlow's settings for a process that trains (and may infer): oneDNN off,
    TensorFlow's own thread pools. Returns False if TensorFlow was already imported."""
    if tensorflow_imported():
        return False
    _choose({ONEDNN: "0"})
    _unset((INTRA_OP, INTER_OP))
    return True


def inference_process(threads: int | None = None) -> bool:
    """Choose TensorFlow's settings for a process that only infers: oneDNN on, one core per
    op and ``threads`` (default: every core) ops at once. Returns False if TensorFlow was
    already imported (its settings are then those of the import)."""
    if tensorflow_imported():
        return False
    _choose({ONEDNN: "1", INTRA_OP: "1", INTER_OP: str(threads or cores())})
    return True


def onednn_enabled() -> bool:
    """Whether TensorFlow in this process uses (or will use) its oneDNN kernels."""
    return os.environ.get(ONEDNN, "") not in ("0", "false", "False")


def inference_branches() -> int:
    """How many independent branches the regressor's network should run as: the inter-op
    threads when every op runs on one core, else 1 (ops already spread over the cores)."""
    if os.environ.get(INTRA_OP, "").strip() != "1":
        return 1
    try:
        return max(1, int(os.environ.get(INTER_OP, "") or cores()))
    except ValueError:
        return 1
