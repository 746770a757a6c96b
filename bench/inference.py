"""Regressor inference speed, side by side with the code before the inference work, and how
close it runs to the machine's float32 matrix-multiply rate.

Each round starts two fresh processes, one after the other: the current code, set up as the
processes that only infer are (``iou_maps.models.runtime.inference_process``: oneDNN on, one core
per
op, the network on parallel branches), and the code of ``--baseline-rev`` (the commit before
issue 18), as it ran then. Each builds a regressor of the demo architecture (fresh weights:
speed does not depend on them), saves and reloads it like a served model, and times
``Regressor.predict`` at each batch size. Between rounds numpy times a 2048×2048 float32
matrix product on every core: the machine's practical limit for this work.

``limit_fraction`` = (convolution FLOPs per chip × chips/s at batch 32) ÷ matmul FLOP/s.
Figures are medians over the rounds; the spread is printed too. Last line
``batch1_tiles_s=… batch32_tiles_s=… baseline_batch32_tiles_s=… speedup_batch32=…
matmul_gflops=… limit_fraction=… bf16_tiles_s=… bf16_speedup=… bf16_mae_delta=…``.

**bfloat16** (``iou_maps.models.precision``), on a processor with bfloat16 units (AMX,
AVX512-BF16): each current-code process also times the same regressor with its network in
bfloat16 at batch 32, right after float32's: ``bf16_speedup`` = bf16 ÷ float32 batch-32
tiles/s of this run. ``bf16_mae_delta`` = held-out mIoU MAE of the heads trained on bfloat16
features − that of the heads trained on float32 ones (``_common.precision_accuracy``: small
synthetic storms under bench/out/precision, reused by later runs; ``--no-accuracy`` skips it).
A processor without bfloat16 units runs float32 only: the bench says so and leaves the bf16
figures out. (No GPU was lent for this work: bfloat16 on a GPU is not measured.)

``--keras-model DIR`` times a saved regressor (``model.keras``) on the Keras backend of the
environment instead (``KERAS_BACKEND=jax``: a GPU machine without TensorFlow's CUDA build),
with the matmul rate measured by that backend on its device; nothing there needs TensorFlow.
``--save-model DIR`` writes the demo-size regressor that mode loads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The last commit before issue 18 (oneDNN, folded batch norms, parallel branches).
BASELINE_REV = "3dabb09"
#: Variables the package sets for itself: a worker starts without them and chooses its own.
TF_VARIABLES = (
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "IOU_MAPS_TF_DEFAULTS",
)


def rate(predict, chips, batch: int, seconds: float) -> float:
    """Tiles per second over repeated calls for at least ``seconds`` (after a warm-up call)."""
    predict(chips[:batch])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predict(chips[:batch])
        n += batch
    return n / (time.perf_counter() - start)


def conv_flops_per_chip(model) -> float:
    """Multiply-adds ×2 of every convolution the regressor runs for one chip (its test-time
    flips included), read off the layers' shapes."""
    import keras

    def walk(layer):
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                yield from walk(inner)
        else:
            yield layer

    flops = 0.0
    images = 1
    for layer in walk(model):
        if type(layer).__name__ == "FlipAugmented" and not layer.inverse:
            images = 4
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw, cin, _ = layer.kernel.shape
            flops += 2.0 * h * w * cout * kh * kw * cin
    return flops * images


def worker(args: argparse.Namespace) -> None:
    """One timing process: ``--code`` holds the package to time (current or baseline)."""
    sys.path.insert(0, str(Path(args.code)))
    sys.path.insert(0, str(Path(args.code) / "bench"))
    if not args.baseline:
        from iou_maps.models import runtime

        runtime.inference_process()
    import numpy as np
    from _common import save_demo_size_regressor

    if args.baseline:  # that commit's layout: one module per concept
        from iou_maps.regressor import load_regressor
    else:
        from iou_maps.models.regressor.files import load_regressor

    with tempfile.TemporaryDirectory() as tmp:
        save_demo_size_regressor(Path(tmp))
        reg = load_regressor(Path(tmp))
    chips = np.random.default_rng(0).integers(0, 255, (max(args.batches), 256, 256, 3), np.uint8)
    rates = {b: rate(reg.predict, chips, b, args.seconds) for b in args.batches}
    bf16 = None
    if args.bf16:  # the same weights, the network in bfloat16, right after float32's
        from iou_maps.models.regressor.model import Regressor

        low = Regressor(reg.model, {**reg.metadata, "precision": "bfloat16"})
        bf16 = rate(low.predict, chips, 32, args.seconds)
    out = {
        "rates": rates,
        "bf16": bf16,
        "flops_per_chip": conv_flops_per_chip(reg.model),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "branches": getattr(reg, "branches", 1),
    }
    print("RESULT " + json.dumps(out))


def keras_backend_rates(model_dir: Path, batches: list[int], seconds: float) -> None:
    """Rates of a saved regressor on the environment's Keras backend (JAX on a GPU)."""
    import keras
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import iou_maps.models.model_layers  # noqa: F401  (registers the regressor's layers)

    backend = keras.backend.backend()
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    flops = conv_flops_per_chip(model)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        device = str(jax.devices()[0])
        run = jax.jit(lambda x: model(x, training=False))

        def predict(x: object) -> None:
            run(x).block_until_ready()

        def matmul(n: int = 8192) -> float:
            a = jnp.ones((n, n), jnp.float32)
            mm = jax.jit(lambda m: jnp.matmul(m, m, precision="highest"))
            mm(a).block_until_ready()
            k, start = 0, time.perf_counter()
            while time.perf_counter() - start < 2.0:
                mm(a).block_until_ready()
                k += 1
            return 2.0 * n**3 * k / (time.perf_counter() - start) / 1e9

        to_device = jnp.asarray
    else:
        device = backend

        def predict(x: object) -> None:
            keras.ops.convert_to_numpy(model(x, training=False))

        def matmul(n: int = 2048) -> float:
            return matmul_gflops()

        to_device = np.asarray
    chips = np.random.default_rng(0).integers(0, 255, (max(batches), 256, 256, 3), np.uint8)
    x = to_device(chips.astype(np.float32))
    rates = {b: rate(predict, x, b, seconds) for b in batches}
    mm = matmul()
    for b in batches:
        print(f"batch {b}: {rates[b]:.1f} tiles/s ({flops * rates[b] / 1e9:.0f} GFLOP/s)")
    best = max(batches, key=lambda b: rates[b])
    print(f"Keras backend {backend} on {device}; float32 matmul {mm:.0f} GFLOP/s; "
          f"convolutions {flops / 1e9:.2f} GFLOP per chip; best batch {best}")  # fmt: skip
    figures = {f"batch{b}_tiles_s": rates[b] for b in batches}
    figures["matmul_gflops"] = mm
    figures["limit_fraction"] = flops * rates[best] / 1e9 / mm
    print(" ".join(f"{k}={v:.3f}" if "fraction" in k else f"{k}={v:.1f}"
                   for k, v in figures.items()))  # fmt: skip
    print("bfloat16 on a GPU is not measured by this bench (no GPU was lent for that work)")


def save_model(directory: Path) -> None:
    """The demo-size regressor (fresh weights) saved where ``--keras-model`` reads it."""
    sys.path.insert(0, str(HERE))
    from _common import save_demo_size_regressor

    save_demo_size_regressor(directory)
    print(f"saved {directory}")


def matmul_gflops(seconds: float = 2.0, n: int = 2048) -> float:
    """float32 n×n matrix products per second on every core (numpy's BLAS), in GFLOP/s."""
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    k, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        k += 1
    return 2.0 * n**3 * k / (time.perf_counter() - start) / 1e9


def baseline_code(rev: str, into: Path) -> Path | None:
    """The package and bench helpers of commit ``rev``, extracted under ``into``."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "iou_maps", "bench/_common.py"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no baseline: cannot read commit {rev}: {exc}", file=sys.stderr)
        return None
    path = into / "baseline.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    return into


def run_worker(code: Path, baseline: bool, a: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TF_VARIABLES}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(code))
    cmd = [sys.executable, str(Path(__file__)), "--worker", "--code", str(code)]
    cmd += ["--seconds", str(a.seconds), "--batches", ",".join(map(str, a.batches))]
    if baseline:
        cmd.append("--baseline")
    elif a.bf16:
        cmd.append("--bf16")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            result["rates"] = {int(k): v for k, v in result["rates"].items()}
            return result
    raise RuntimeError(f"worker failed ({proc.returncode}): {proc.stderr[-2000:]}")


def bf16_figures(a: argparse.Namespace, rates: list[float], r32: float) -> dict[str, float]:
    """bf16_tiles_s, bf16_speedup (÷ float32 batch 32 of this run), bf16_mae_delta."""
    bf16 = statistics.median(rates)
    print(f"bfloat16 batch 32: {spread(rates)} tiles/s: {bf16 / r32:.2f}x float32's")
    out = {"bf16_tiles_s": bf16, "bf16_speedup": bf16 / r32}
    if not a.no_accuracy:
        from _common import OUT, precision_accuracy

        acc = precision_accuracy(OUT / "precision", ("float32", "bfloat16"))
        print(f"held-out mIoU MAE on {acc['tiles']} tiles: float32 {acc['float32']:.4f}, "
              f"bfloat16 {acc['bfloat16']:.4f}")  # fmt: skip
        out["bf16_mae_delta"] = acc["bfloat16"] - acc["float32"]
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=4.0, help="time per batch size and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds (one process per code each)")
    p.add_argument("--batches", default="1,32", help="batch sizes, comma-separated")
    p.add_argument("--baseline-rev", default=BASELINE_REV, help="commit of the baseline code")
    p.add_argument("--no-baseline", action="store_true", help="time the current code only")
    p.add_argument("--keras-model", type=Path, help="time this saved regressor on the "
                   "environment's Keras backend (e.g. KERAS_BACKEND=jax on a GPU)")  # fmt: skip
    p.add_argument("--save-model", type=Path, help="write the demo-size regressor here")
    p.add_argument("--no-accuracy", action="store_true", help="skip the held-out accuracy "
                   "of the bfloat16 heads (bf16_mae_delta)")  # fmt: skip
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    a = p.parse_args()
    a.batches = [int(b) for b in str(a.batches).split(",")]
    if 32 not in a.batches:
        a.batches.append(32)
    if a.worker:
        worker(a)
        return
    if a.save_model:
        save_model(a.save_model)
        return
    if a.keras_model:
        keras_backend_rates(a.keras_model, a.batches, a.seconds)
        return
    from iou_maps.models.precision import bf16_units

    units = bf16_units()
    a.bf16 = units is not None
    print(f"bfloat16 units: {units}" if units else "this processor has no bfloat16 units "
          "(amx_bf16, avx512_bf16): float32 only, as the service would run")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        base = None if a.no_baseline else baseline_code(a.baseline_rev, Path(tmp))
        current, old, matmul = [], [], []
        for r in range(a.rounds):
            current.append(run_worker(ROOT, False, a))
            if base is not None:
                old.append(run_worker(base, True, a))
            matmul.append(matmul_gflops())
            line = f"round {r + 1}: " + ", ".join(
                f"batch {b}: {current[-1]['rates'][b]:.1f}" for b in a.batches
            )
            if current[-1]["bf16"]:
                ratio = current[-1]["bf16"] / current[-1]["rates"][32]
                line += f"; bfloat16 batch 32: {current[-1]['bf16']:.1f} ({ratio:.2f}x)"
            if old:
                line += f" tiles/s; baseline batch 32: {old[-1]['rates'][32]:.1f}"
            print(f"{line}; matmul {matmul[-1]:.0f} GFLOP/s", flush=True)

    info = current[-1]
    print(f"current code: oneDNN={info['onednn']} branches={info['branches']}")
    for b in a.batches:
        print(f"batch {b}: {spread([c['rates'][b] for c in current])} tiles/s")
    flops = info["flops_per_chip"]
    r32 = statistics.median(c["rates"][32] for c in current)
    mm = statistics.median(matmul)
    achieved = flops * r32 / 1e9
    print(f"convolutions: {flops / 1e9:.2f} GFLOP per chip; at batch 32 {achieved:.0f} GFLOP/s")
    print(f"float32 matmul (numpy, every core): {spread(matmul)} GFLOP/s")
    figures = {f"batch{b}_tiles_s": statistics.median(c["rates"][b] for c in current)
               for b in a.batches}  # fmt: skip
    if old:
        b32 = statistics.median(o["rates"][32] for o in old)
        print(f"baseline ({a.baseline_rev}, oneDNN={old[-1]['onednn']}) batch 32: "
              f"{spread([o['rates'][32] for o in old])} tiles/s")  # fmt: skip
        figures["baseline_batch32_tiles_s"] = b32
        figures["speedup_batch32"] = r32 / b32
    figures["matmul_gflops"] = mm
    figures["limit_fraction"] = achieved / mm
    if a.bf16:
        figures.update(bf16_figures(a, [c["bf16"] for c in current], r32))
    print(" ".join(f"{k}={v:.4f}" if "delta" in k else f"{k}={v:.3f}"
                   if "fraction" in k or "speedup" in k else f"{k}={v:.2f}"
                   for k, v in figures.items()))  # fmt: skip


if __name__ == "__main__":
    main()
