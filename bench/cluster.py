"""Scale-out figures, measured side by side in one run on one synthetic storm:

- ``cluster_vs_local``: precompute's tiles/s on a Dask LocalCluster of 2 single-threaded
  worker processes ÷ its tiles/s in one process (the default path), each on an empty cache,
  alternating round by round. The workers load the model before the clock starts, as the
  in-process run loads it before its own: both rates are steady-state computing.
- ``duplicate_computes``: analysis tiles computed more than once while 8 clients request the
  same cold tiles through one server of 2 uvicorn worker processes (from the model counters
  in Redis, which every process adds to).
- ``cached_under_load``: the median latency of cached metric tiles while 40 clients request
  cold tiles ÷ their median on the idle server (the model runs in its own process, niced,
  behind a bounded queue).

Last line ``cluster_vs_local=… duplicate_computes=… cached_under_load=…`` (targets on 2 cores:
≥ 0.75, 0, ≤ 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from _common import OUT, ensure_demo_size_regressor, log, private_redis, progress

STORM = "cluster"
MODEL = "bench"


def storm_and_model(data: Path, scenes: int, size: int) -> None:
    from iou_maps.cli.demo import ensure_storm
    from iou_maps.models.registry import regressor_dir

    with progress() as pr:
        ensure_storm(data, STORM, seed=9, scenes=scenes, size=size, progress=pr, log=log)
    ensure_demo_size_regressor(regressor_dir(data, MODEL))


def local_rate(data: Path, redis_url: str) -> float:
    """Tiles/s of precompute in this process (model loaded before the clock starts)."""
    from iou_maps.compute.engine import open_engine
    from iou_maps.compute.precompute import precompute
    from iou_maps.config import Settings

    engine = open_engine(Settings(data_dir=data, model=MODEL, redis_url=redis_url))
    try:
        summary = precompute(engine, STORM)
    finally:
        engine.close()
    log(f"in process: {summary.computed} tiles in {summary.seconds:.1f} s")
    return summary.tiles_per_second


def cluster_rate(client, data: Path, redis_url: str) -> float:
    from iou_maps.compute.cluster import precompute_on_cluster, prepare_workers
    from iou_maps.config import Settings

    settings = Settings(data_dir=data.resolve(), model=MODEL, redis_url=redis_url)
    prepare_workers(client, settings)  # the model loaded on every worker, off the clock
    summary = precompute_on_cluster(client, settings, STORM)
    log(f"LocalCluster(2): {summary.computed} tiles in {summary.seconds:.1f} s")
    return summary.tiles_per_second


class Conn:
    """One keep-alive connection (the standard library's client)."""

    def __init__(self, url: str) -> None:
        import http.client

        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=300)

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def tile_url(t) -> str:
    return f"/storms/{STORM}/metrics/miou/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"


def health(url: str) -> dict:
    return json.loads(Conn(url).get("/healthz")[2])


def duplicates(data: Path, redis_url: str, tiles: list) -> tuple[int, int]:
    """(duplicate computations, distinct tiles) of 8 clients asking for the same cold z16
    tiles through 2 uvicorn workers."""
    import mercantile

    from service.testing import ServiceProcess

    parents = sorted({mercantile.parent(t, zoom=16) for t in tiles})[:6]
    with ServiceProcess(data, redis_url, model=MODEL, workers=2, log_path=OUT / "dup.log") as svc:
        barrier = threading.Barrier(8)

        def client() -> None:
            conn = Conn(svc.url)
            barrier.wait()
            for p in parents:
                status, _, body = conn.get(tile_url(p))
                assert status in (200, 204), (status, body[:200])

        threads = [threading.Thread(target=client) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        time.sleep(0.5)  # the writers count after storing
        body = health(svc.url)
        computed = int(body["tiles_computed_all"])
        # Distinct tiles computed: the stored analysis tiles under those parents that have a
        # value (the "no imagery" markers cost no model call).
        import redis

        from iou_maps.compute.metric_store import MetricStore
        from iou_maps.storms.grid import descendants

        store = MetricStore(redis.Redis.from_url(redis_url), body["model_id"])
        under = [t for p in parents for t in descendants(p, 18)]
        distinct = sum(e.has_imagery for e in store.get_many(STORM, under).values())
    return computed - distinct, distinct


def latencies(conn: Conn, urls: list[str]) -> list[float]:
    out = []
    for u in urls:
        t0 = time.perf_counter()
        status, headers, _ = conn.get(u)
        out.append(time.perf_counter() - t0)
        if status != 200 or headers.get("x-iou-computed") != "0":
            raise SystemExit(f"{u}: not a cached tile ({status}, {headers})")
    return out


def under_load(data: Path, redis_url: str, tiles: list, seconds: float) -> tuple[float, float]:
    """(idle p50, p50 under load) of cached tiles, seconds."""
    import mercantile

    from service.testing import ServiceProcess

    with ServiceProcess(data, redis_url, model=MODEL, log_path=OUT / "load.log") as svc:
        conn = Conn(svc.url)
        # 24 tiles with imagery (a tile at the coverage's edge may have none: a 204),
        # computed once: cached from here on.
        cached: list = []
        for t in tiles:
            if len(cached) == 24:
                break
            if conn.get(tile_url(t))[0] == 200:
                cached.append(t)
        taken = set(cached)
        cold_parents = sorted(
            {mercantile.parent(t, zoom=16) for t in tiles if t not in taken}
            - {mercantile.parent(t, zoom=16) for t in cached}
        )
        urls = [tile_url(t) for t in cached]
        latencies(conn, urls)
        idle = [x for _ in range(8) for x in latencies(conn, urls)]
        stop = threading.Event()
        pending = list(cold_parents)  # tiles not complete yet, asked for round-robin
        lock = threading.Lock()
        turn = [0]

        def cold_client() -> None:
            # Asks again at once for a tile that came back incomplete (the queue was full):
            # the harshest of clients, which keeps the API process busy as well as the model.
            c = Conn(svc.url)
            while not stop.is_set():
                with lock:
                    if not pending:
                        break
                    t = pending[turn[0] % len(pending)]
                    turn[0] += 1
                status, headers, _ = c.get(tile_url(t))
                if status != 200 or headers.get("x-iou-missing") == "0":
                    with lock:
                        if t in pending:
                            pending.remove(t)

        threads = [threading.Thread(target=cold_client, daemon=True) for _ in range(40)]
        for th in threads:
            th.start()
        time.sleep(2.0)  # the model saturated, the queue full
        loaded: list[float] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            loaded += latencies(conn, urls)
        busy = health(svc.url)
        left = len(pending)
        stop.set()
        for th in threads:
            th.join(timeout=300)
        log(
            f"under load: {len(loaded)} cached requests, model calls {busy['model_calls']}, "
            f"queue {busy['compute_queued']} tiles, {left} cold tiles still pending at the end"
        )
        if not left:
            log("warning: the cold tiles ran out before the end: use a larger --scenes")
    return statistics.median(idle), statistics.median(loaded)


def main() -> None:
    from iou_maps.models import runtime

    runtime.inference_process()  # the in-process side runs as `iou-maps precompute` does
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=OUT / "cluster")
    p.add_argument("--scenes", type=int, default=48)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=2, help="precompute runs of each kind")
    p.add_argument("--seconds", type=float, default=10.0, help="time under load")
    a = p.parse_args()
    storm_and_model(a.data_dir, a.scenes, a.size)

    import redis
    from distributed import Client, LocalCluster

    from iou_maps.compute.plan import tiles_of
    from iou_maps.storms.catalog import Catalog

    tiles = tiles_of(Catalog(a.data_dir).storm(STORM), 18)
    log(f"storm {STORM}: {len(tiles)} analysis tiles")
    with private_redis() as url:
        r = redis.Redis.from_url(url)
        local, cluster = [], []
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None, silence_logs=50) as lc,
            Client(lc) as client,
        ):  # fmt: skip
            for _ in range(a.rounds):
                r.flushdb()
                local.append(local_rate(a.data_dir, url))
                r.flushdb()
                cluster.append(cluster_rate(client, a.data_dir, url))
        r.flushdb()
        dup, distinct = duplicates(a.data_dir, url, tiles)
        r.flushdb()
        idle, loaded = under_load(a.data_dir, url, tiles, a.seconds)
    ratio = statistics.median(cluster) / statistics.median(local)
    log(f"in process {local} tiles/s; LocalCluster(2) {cluster} tiles/s")
    log(f"duplicates: {dup} of {distinct} distinct tiles; cached p50 idle {idle * 1e3:.2f} ms, "
        f"under load {loaded * 1e3:.2f} ms")  # fmt: skip
    print(f"local_tiles_s={statistics.median(local):.1f} "
          f"cluster_tiles_s={statistics.median(cluster):.1f} "
          f"cached_idle_ms={idle * 1e3:.2f} cached_loaded_ms={loaded * 1e3:.2f}")  # fmt: skip
    print(f"cluster_vs_local={ratio:.3f} duplicate_computes={dup} "
          f"cached_under_load={loaded / idle:.2f}")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
