"""TensorFlow's settings by process role: oneDNN only where a process only infers, the user's
values always win, and the faster settings give the same numbers (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iou_maps.models import runtime

from .test_regressor import META, with_batch_statistics

REPO = Path(__file__).resolve().parent.parent
VARIABLES = (runtime.ONEDNN, runtime.INTRA_OP, runtime.INTER_OP, runtime.CHOSEN_BY_PACKAGE)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO), **extra}


def run(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


ROLE = """
import json, os, sys
from iou_maps.models import runtime
getattr(runtime, sys.argv[1] if len(sys.argv) > 1 else "{role}")()
print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))
"""


def role(name: str, env: dict[str, str]) -> dict:
    return run(ROLE.format(role=name, names=VARIABLES[:3]), env)


def test_training_keeps_onednn_off_and_inference_turns_it_on() -> None:
    assert role("training_process", clean_env()) == {
        runtime.ONEDNN: "0",
        runtime.INTRA_OP: None,
        runtime.INTER_OP: None,
    }
    infer = role("inference_process", clean_env())
    assert infer[runtime.ONEDNN] == "1" and infer[runtime.INTRA_OP] == "1"
    assert int(infer[runtime.INTER_OP]) >= 1


def test_the_users_values_win() -> None:
    env = clean_env(TF_ENABLE_ONEDNN_OPTS="0", TF_NUM_INTRAOP_THREADS="2")
    assert role("inference_process", env)[runtime.ONEDNN] == "0"
    assert role("inference_process", env)[runtime.INTRA_OP] == "2"
    assert role("training_process", clean_env(TF_ENABLE_ONEDNN_OPTS="1"))[runtime.ONEDNN] == "1"


def test_a_child_chooses_its_own_role() -> None:
    # A process started by an inference process (whose choices are in its environment) may
    # train: the package's choices are not mistaken for the user's.
    parent = clean_env(
        TF_ENABLE_ONEDNN_OPTS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="2",
        IOU_MAPS_TF_DEFAULTS=",".join(VARIABLES[:3]),
    )  # fmt: skip
    assert role("training_process", parent) == {
        runtime.ONEDNN: "0",
        runtime.INTRA_OP: None,
        runtime.INTER_OP: None,
    }


PREDICT = """
import json, sys
import numpy as np
from pathlib import Path
from iou_maps.models import runtime
getattr(runtime, sys.argv[1])()
from tensorflow.python.util import _pywrap_util_port
from iou_maps.models.regressor.files import load_regressor
reg = load_regressor(Path(sys.argv[2]))
np.save(sys.argv[4], reg.predict(np.load(sys.argv[3])))
print(json.dumps({"onednn": bool(_pywrap_util_port.IsMklEnabled()), "branches": reg.branches}))
"""


@pytest.mark.parametrize("kind", ["softmax", "encoder"])
def test_onednn_inference_gives_the_same_numbers(kind, tmp_path) -> None:
    from iou_maps.models.regressor.files import save_regressor
    from iou_maps.models.regressor.network import build_regressor

    from .conftest import tiny_segmentation

    seg = with_batch_statistics(tiny_segmentation())
    save_regressor(build_regressor(seg, kind), META, tmp_path / "reg")
    chips = np.random.default_rng(5).integers(0, 255, (6, 256, 256, 3), dtype=np.uint8)
    chips[3, :, 100:] = 0  # part of a tile without imagery
    np.save(tmp_path / "chips.npy", chips)
    outs, infos = {}, {}
    for name in ("training_process", "inference_process"):
        out = tmp_path / f"{name}.npy"
        args = [name, str(tmp_path / "reg"), str(tmp_path / "chips.npy"), str(out)]
        proc = subprocess.run(
            [sys.executable, "-c", PREDICT, *args], env=clean_env(), capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        infos[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        outs[name] = np.load(out)
    assert infos["training_process"] == {"onednn": False, "branches": 1}
    assert infos["inference_process"]["onednn"] is True
    assert infos["inference_process"]["branches"] == runtime.cores()
    np.testing.assert_allclose(outs["inference_process"], outs["training_process"], atol=1e-5)


def test_missing_tensorflow_says_which_extra_to_install() -> None:
    # TensorFlow comes with the `cpu` or `gpu` extra: without it, the error says so.
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "try:\n    import iou_maps.models.regressor\n"
        "except ModuleNotFoundError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert "pip install 'iou-maps[cpu]'" in proc.stdout, proc.stderr[-2000:]
