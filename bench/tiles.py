"""Tile latency of the real service: imagery vs cached metric tiles vs cold metric tiles.

Starts one uvicorn server (the service as deployed, embedded Redis unless --redis-url) over its
own data directory (a synthetic storm and a regressor of the demo's size, generated on first
run) and measures, for the analysis tiles of the storm:

(a) imagery tiles (PNG), (b) cached metric tiles (PNG), (c) cold metric tiles at the analysis
zoom (Redis flushed before each round), and in-process, (d) the raw cost of the same work
without the service: the imagery read of each tile plus one regressor call, by the engine's
own read and the service's model. Rounds of (c) and (d) alternate, so that both see the
machine at the same speed. (e) One z14 imagery tile (WebP, as the viewer asks), rendered (the
imagery tile cache, a private redis-server, flushed first) and then served from that cache,
alternating. Requests go over one keep-alive connection of the standard library's HTTP
client, which adds next to nothing of its own, and send no If-None-Match (no 304s).

Prints the figures last as one line of name=value pairs, ending with
``cached_vs_imagery=<ratio> cold_vs_raw=<ratio> imagery_cached_vs_cold=<ratio>`` (ratios of
median latencies).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import mercantile  # noqa: E402
import shapely  # noqa: E402
from _common import private_redis  # noqa: E402

from iou_maps.storms.catalog import Catalog  # noqa: E402
from service.testing import ServiceProcess  # noqa: E402

STORM = "bench"
MODEL = "bench"


def make_data(data_dir: Path, scenes: int, seed: int) -> None:
    """A synthetic storm and a regressor of the demo's architecture (the model the service
    runs; its weights do not change the timings)."""
    from _common import save_demo_size_regressor

    from iou_maps.models.registry import regressor_dir
    from iou_maps.storms.ingest import ingest
    from iou_maps.storms.synthetic.generate import generate_storm

    source = data_dir.parent / "source"
    shutil.rmtree(source, ignore_errors=True)
    generate_storm(STORM, source, scenes=scenes, seed=seed, size=512)
    report = ingest(data_dir, STORM, [source])
    if not report.ingested:
        raise SystemExit(f"ingest failed: {report.skipped}")
    save_demo_size_regressor(regressor_dir(data_dir, MODEL))


class Client:
    """One keep-alive HTTP/1.1 connection (the standard library's: httpx spent ~0.2 ms of
    its own on each request, a fifth of a cached tile, where GIS clients and browsers
    spend next to nothing)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def get(self, path: str) -> tuple[int, bytes]:
        status, body, _ = self.get_with_headers(path)
        return status, body

    def get_with_headers(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            self.conn.request("GET", path)
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The server closes a keep-alive connection idle past its timeout (uvicorn: 5 s),
            # e.g. while this process loads the model for the raw rounds: open a new one.
            self.conn.close()
            self.conn.request("GET", path)
            r = self.conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}

    def close(self) -> None:
        self.conn.close()


def timed(client: Client, urls: list[str]) -> list[float]:
    out = []
    for url in urls:
        t0 = time.perf_counter()
        status, body = client.get(url)
        out.append(time.perf_counter() - t0)
        if status != 200:
            raise SystemExit(f"{url}: {status} {body[:300]!r}")
    return out


def imagery_cache_rounds(
    client: Client, tile_cache: object, url: str, rounds: int
) -> tuple[list[float], list[float]]:
    """Latencies of ``url`` rendered (tile cache flushed) and then from the tile cache, in
    alternating rounds; checks that both are the same bytes."""
    cold: list[float] = []
    cached: list[float] = []
    client.get(url)  # warm-up: GDAL opens the scenes' overviews
    for _ in range(rounds):
        tile_cache.flushdb()  # type: ignore[attr-defined]
        for kind, out in (("miss", cold), ("hit", cached)):
            t0 = time.perf_counter()
            status, body, headers = client.get_with_headers(url)
            out.append(time.perf_counter() - t0)
            if status != 200 or headers.get("x-iou-tile-cache") != kind:
                raise SystemExit(f"{url}: {status}, tile cache {headers.get('x-iou-tile-cache')}")
            if kind == "miss":
                rendered = body
            elif body != rendered:
                raise SystemExit(f"{url}: the cached tile is not the rendered one")
    return cold, cached


def figures(name: str, samples: list[float]) -> dict[str, float]:
    med = statistics.median(samples)
    return {f"{name}_ms": med * 1e3, f"{name}_rps": len(samples) / sum(samples)}


class RawCost:
    """Imagery read + one regressor call per tile, in this process (no HTTP, no cache)."""

    def __init__(self, data_dir: Path, tiles: list[mercantile.Tile]) -> None:
        import numpy as np

        from iou_maps.compute.engine import MetricEngine
        from iou_maps.models.registry import load_regressor_model

        self._np = np
        self.predictor = load_regressor_model(data_dir, MODEL)
        self.engine = MetricEngine(
            Catalog(data_dir), self.predictor, None, self.predictor.analysis_zoom
        )
        self.backend = self.engine.storm(STORM).backend
        self.tiles = tiles
        self.reads: list[float] = []
        self.preds: list[float] = []
        self.totals: list[float] = []
        chip = self.engine.local().reader.read_one(self.backend, tiles[0]).chip
        self.predictor.predict(np.asarray(chip)[None])  # warm up (graph tracing)

    def round(self) -> None:
        for t in self.tiles:
            t0 = time.perf_counter()
            chip = self.engine.local().reader.read_one(self.backend, t).chip
            t1 = time.perf_counter()
            self.predictor.predict(self._np.asarray(chip)[None])
            t2 = time.perf_counter()
            self.reads.append(t1 - t0)
            self.preds.append(t2 - t1)
            self.totals.append(t2 - t0)

    def figures(self) -> dict[str, float]:
        self.engine.close()
        return {
            "raw_read_ms": statistics.median(self.reads) * 1e3,
            "raw_predict_ms": statistics.median(self.preds) * 1e3,
            **figures("raw", self.totals),
        }


def main() -> None:
    from iou_maps.models import runtime

    # The raw side runs in this process as the server runs (iou_maps.models.runtime's inference
    # settings): both sides pay the same for a model call.
    runtime.inference_process()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "tiles")
    parser.add_argument("--rounds", type=int, default=20, help="Passes over the storm's tiles.")
    parser.add_argument("--scenes", type=int, default=4, help="Scenes of the generated storm.")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--redis-url", default=None, help="Redis server (default: embedded).")
    parser.add_argument("--fresh", action="store_true", help="Regenerate the data directory.")
    args = parser.parse_args()

    data_dir = args.out / "data"
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    if not (data_dir / "storms" / STORM / "footprints.parquet").is_file():
        print(f"generating storm and model under {data_dir} ...", file=sys.stderr)
        make_data(data_dir, args.scenes, args.seed)
    from _common import ensure_demo_size_regressor

    from iou_maps.models.registry import regressor_dir

    ensure_demo_size_regressor(regressor_dir(data_dir, MODEL))
    storm = Catalog(data_dir).storm(STORM)
    # The analysis tiles of the storm (the generated model's analysis zoom is 18).
    tiles = [
        t
        for t in mercantile.tiles(*storm.bounds, zooms=[18])
        if len(storm.scenes_intersecting(shapely.box(*mercantile.bounds(t))))
    ]

    def url(kind: str, t: mercantile.Tile) -> str:
        layer = "imagery" if kind == "imagery" else "metrics/miou"
        return f"/storms/{STORM}/{layer}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"

    w, s, e, n = storm.bounds
    z14 = mercantile.tile((w + e) / 2, (s + n) / 2, 14)
    z14_url = f"/storms/{STORM}/imagery/tiles/WebMercatorQuad/14/{z14.x}/{z14.y}.webp"

    log = args.out / "service.log"
    results: dict[str, float] = {"tiles": len(tiles), "rounds": args.rounds}
    with (
        private_redis() as tile_cache_url,
        ServiceProcess(
            data_dir, args.redis_url, model=MODEL, log_path=log, tile_cache_url=tile_cache_url
        ) as svc,
    ):
        import redis

        from iou_maps.compute.metric_store import connect

        redis_client = connect(args.redis_url, data_dir)
        tile_cache = redis.Redis.from_url(tile_cache_url)
        c = Client(svc.url)
        try:
            imagery_urls = [url("imagery", t) for t in tiles]
            metric_urls = [url("metric", t) for t in tiles]
            timed(c, imagery_urls)  # warm-up: GDAL opens, block cache
            redis_client.flushdb()
            timed(c, metric_urls)  # warm-up: TF graph, fills the cache
            imagery, cached, cold = [], [], []
            for _ in range(args.rounds):
                imagery += timed(c, imagery_urls)
                cached += timed(c, metric_urls)
            # Cold tiles and their raw cost alternate round by round: a shared machine's speed
            # drifts over minutes, and the ratio should compare like with like.
            raw = RawCost(data_dir, tiles)
            for _ in range(args.rounds):
                redis_client.flushdb()
                cold += timed(c, metric_urls)
                raw.round()
            calls = json.loads(c.get("/healthz")[1])["model_calls"]
            imagery_cold, imagery_cached = imagery_cache_rounds(
                c, tile_cache, z14_url, 2 * args.rounds
            )
        finally:
            c.close()
    results.update(figures("imagery", imagery))
    results.update(figures("cached", cached))
    results.update(figures("cold", cold))
    results["model_calls"] = calls
    results.update(raw.figures())
    results["cached_vs_imagery"] = results["cached_ms"] / results["imagery_ms"]
    results["cold_vs_raw"] = results["cold_ms"] / results["raw_ms"]
    results.update(figures("imagery_z14_cold", imagery_cold))
    results.update(figures("imagery_z14_cached", imagery_cached))
    results["imagery_cached_vs_cold"] = (
        results["imagery_z14_cached_ms"] / results["imagery_z14_cold_ms"]
    )
    print(
        " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items())
    )


if __name__ == "__main__":
    main()
