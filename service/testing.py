"""Run the service as a real uvicorn subprocess on a free loopback port (tests and benchmarks),
and fuzz it with schemathesis (tests/test_api_fuzz.py, bench/fuzz.py)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import mercantile

from iou_maps.storms.catalog import STORM_NAME_RE
from iou_maps.storms.grid import MAX_ZOOM
from service.params.location import MAX_LATITUDE

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """``uvicorn service.app:app_from_env --factory`` with IOU_MAPS_* settings from ``env``."""

    def __init__(
        self,
        data_dir: Path,
        redis_url: str | None,
        model: str = "tiny",
        log_path: Path | None = None,
        startup_timeout: float = 120.0,
        workers: int = 1,
        **settings: str,
    ) -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "IOU_MAPS_DATA_DIR": str(data_dir),
            "IOU_MAPS_MODEL": model,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **{f"IOU_MAPS_{k.upper()}": v for k, v in settings.items()},
        }
        self.env.pop("REDIS_URL", None)
        self.env.pop("IOU_MAPS_REDIS_URL", None)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> ServiceProcess:
        """Start the server and wait until /healthz answers."""
        cmd = [
            sys.executable, "-m", "uvicorn", "service.app:app_from_env", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"service did not start: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 4000) -> str:
        """The end of the server's log."""
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def inference_pids(self) -> list[int]:
        """PIDs of the processes in which this service runs the model (its multiprocessing
        workers), e.g. to pause them with SIGSTOP."""
        import psutil

        if self.proc is None:
            return []

        def spawned(p: psutil.Process) -> bool:
            return "spawn_main" in " ".join(p.cmdline())

        # uvicorn's own worker processes (--workers) are spawned too: the model's processes
        # are the spawned ones that spawned none themselves.
        kids = [k for k in psutil.Process(self.proc.pid).children(recursive=True) if spawned(k)]
        return [k.pid for k in kids if not any(spawned(c) for c in k.children())]

    def alive(self) -> bool:
        """Whether the server process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server (terminate, then kill)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- API fuzzing

#: What the fuzzers assert of every answer: no server error, and a status, media type, body
#: and headers the OpenAPI document declares; invalid input (negative cases) rejected.
FUZZ_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
)


def fuzz_config(seed: int | None, max_examples: int, workers: int = 1) -> Any:
    """schemathesis settings: every phase but the stateful one (there is no state to
    build: every operation is a GET), positive and negative cases, ``FUZZ_CHECKS``; a
    ``seed`` makes the cases the same on every run (no example database or cache either)."""
    import schemathesis

    data: dict[str, Any] = {
        "generation": {"mode": "all", "max-examples": max_examples, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in FUZZ_CHECKS}},
        "suppress-health-check": ["all"],
        "cache": {"enabled": False},  # state kept between runs would change the cases
        "request-timeout": 120,
        "workers": workers,
    }
    if seed is not None:
        data["seed"] = seed
    return schemathesis.Config.from_dict(data)


def storm_area(
    base_url: str, storm: str
) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """A served storm's bounds and metric zoom range, as ``/storms/{storm}`` reports them."""
    info = httpx.get(f"{base_url}/storms/{storm}", timeout=60).json()
    return tuple(info["bounds"]), (info["minzoom"], max(info["maxzoom"], info["analysis_zoom"]))


def steer_to_storm(
    path_parameters: dict[str, Any] | None,
    storm: str,
    bounds: tuple[float, float, float, float],
    zooms: tuple[int, int],
) -> None:
    """Point a generated request at the served storm, in place.

    Generated storm names, coordinates and tiles almost never hit a storm (404, 204, or 422
    for a metric zoom outside the storm's): valid ones are mapped onto ``storm``, coordinates
    onto the storm's bounds grown by their size on every side (so ~1/9 land inside), zooms
    into ``zooms`` (the storm's metric zoom range) and tiles onto the 3x3 tiles around the
    storm's centre at that zoom. Invalid values are left as generated, to be rejected.
    """
    p = path_parameters
    if not p:
        return
    if isinstance(p.get("storm"), str) and STORM_NAME_RE.fullmatch(p["storm"]):
        p["storm"] = storm
    w, s, e, n = bounds
    lon, lat = _number(p.get("lon"), 180), _number(p.get("lat"), MAX_LATITUDE)
    if lon is not None and lat is not None:
        p["lon"] = w - (e - w) + (lon + 180) / 360 * 3 * (e - w)
        p["lat"] = s - (n - s) + (lat + MAX_LATITUDE) / (2 * MAX_LATITUDE) * 3 * (n - s)
    z, x, y = (_integer(p.get(k), 2**MAX_ZOOM) for k in "zxy")
    if z is not None and z <= MAX_ZOOM and x is not None and y is not None:
        lo, hi = zooms
        z = p["z"] = lo + z % (hi - lo + 1)
        centre = mercantile.tile((w + e) / 2, (s + n) / 2, z)
        last = 2**z - 1
        p["x"] = min(max(centre.x + x % 3 - 1, 0), last)
        p["y"] = min(max(centre.y + y % 3 - 1, 0), last)


def _number(value: Any, limit: float) -> float | None:
    """``value`` (a number, or its text: some phases generate path parameters as text) if it
    is a finite number within ±``limit``."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and abs(number) <= limit else None


def _integer(value: Any, limit: int) -> int | None:
    """``value`` (an integer, or its decimal digits) if it is within 0..``limit``."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
        return value
    return None


def open_popup_at(page: Any, lat: float, lon: float) -> None:
    """Click the viewer's map where ``lat, lon`` is drawn and wait for the metrics popup
    (``page``: a Playwright page of the viewer)."""
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate(
        "([lat, lon]) => { const p = iouMaps.map.latLngToContainerPoint([lat, lon]);"
        " return [p.x, p.y]; }",
        [lat, lon],
    )
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.locator(".metrics-popup table").wait_for(timeout=60_000)
