"""Throughput of cached tiles under load: the service against nginx serving the same bytes.

Starts ``iou-maps serve --workers 2`` (uvicorn's two worker processes over the app factory, as
that command runs it) over a precomputed synthetic storm (bench/tiles.py's data: the storm and
a regressor of the demo's size), with its own metric Redis and imagery tile cache server, and
loads it with wrk (8 connections, 2 threads, ``--duration`` seconds per figure) cycling over:

- cached metric tiles (PNG) of the analysis zoom and of two lower zooms, each figure alone;
- cached imagery tiles (PNG, a zoom the imagery tile cache keeps);
- nginx (2 workers, its own config in a temporary directory, a free loopback port) serving
  every metric tile's bytes from files under the same paths.

Every URL is requested until the service answers it from its kept bytes
(``X-IoU-Tile-Cache: hit``) before any figure. wrk and nginx are Debian packages: the bench
installs them with apt-get when they are missing (as .ci/run installs its packages).

Last line: ``cached_metric_rps=… cached_imagery_rps=… static_rps=… cached_vs_static=…``
(cached_metric_rps: the lowest of the metric zooms' figures; cached_vs_static: it ÷ static_rps).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import mercantile  # noqa: E402
import shapely  # noqa: E402
from _common import log, private_redis  # noqa: E402
from tiles import MODEL, STORM, Client, make_data  # noqa: E402

from iou_maps.storms.catalog import Catalog, Storm  # noqa: E402
from service.testing import ServiceProcess, free_port  # noqa: E402

CONNECTIONS = 8
#: Lua for wrk: each request the next path of the list, round robin per connection.
WRK_SCRIPT = """
paths = {%s}
i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""
NGINX_CONF = """
worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  default_type image/png;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {tmp}/root;
  }}
}}
"""


def ensure_packages(*commands: str) -> None:
    """apt-get install the Debian packages (named as their commands) that are missing."""
    missing = [
        c for c in commands if shutil.which(c) is None and not Path(f"/usr/sbin/{c}").exists()
    ]
    if missing:
        log(f"installing {' '.join(missing)} (apt-get)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True
        )


def wrk(url: str, paths: list[str], seconds: int, tmp: Path) -> float:
    """Requests per second of wrk over ``paths`` (fails on any non-2xx/3xx answer)."""
    script = tmp / "paths.lua"
    script.write_text(WRK_SCRIPT % ", ".join(f'"{p}"' for p in paths))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise SystemExit(f"no figure from wrk:\n{out}")
    return float(match.group(1))


def warm(client: Client, paths: list[str], kept: bool) -> dict[str, bytes]:
    """Request every path until it is served from a cache; the bytes of each."""
    bodies: dict[str, bytes] = {}
    for path in paths:
        for _ in range(6):
            status, body, headers = client.get_with_headers(path)
            if status != 200:
                raise SystemExit(f"{path}: {status} {body[:300]!r}")
            if not kept or headers.get("x-iou-tile-cache") == "hit":
                bodies[path] = body
                break
        else:
            raise SystemExit(f"{path} is never served from the kept bytes: {headers}")
    return bodies


def nginx_rps(bodies: dict[str, bytes], seconds: int, tmp: Path) -> float:
    """wrk against nginx serving ``bodies`` from files under their paths."""
    for path, body in bodies.items():
        file = tmp / "root" / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(body)
    # nginx's workers run as another user when it is started as root: let them read.
    for d in (tmp, *(p for p in (tmp / "root").rglob("*") if p.is_dir()), tmp / "root"):
        d.chmod(0o755)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        client = None
        for _ in range(100):
            try:
                client = Client(url)
                warm(client, list(bodies), kept=False)
                break
            except OSError:
                time.sleep(0.1)
        if client is None:
            raise SystemExit("nginx did not start")
        client.close()
        return wrk(url, list(bodies), seconds, tmp)
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(10)


def tiles_at(storm: Storm, z: int) -> list[mercantile.Tile]:
    """The tiles of zoom ``z`` with a scene under them."""
    return [
        t
        for t in mercantile.tiles(*storm.bounds, zooms=[z])
        if len(storm.scenes_intersecting(shapely.box(*mercantile.bounds(t))))
    ]


def main() -> None:
    """Build and precompute the storm, then the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "serve_load")
    parser.add_argument("--duration", type=int, default=30, help="Seconds of load per figure.")
    parser.add_argument("--scenes", type=int, default=4, help="Scenes of the generated storm.")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    ensure_packages("wrk", "nginx")

    data_dir = args.out / "data"
    if not (data_dir / "storms" / STORM / "footprints.parquet").is_file():
        log(f"generating storm and model under {data_dir} ...")
        make_data(data_dir, args.scenes, args.seed)
    storm = Catalog(data_dir).storm(STORM)
    za = 18  # the generated model's analysis zoom
    zooms = (za, za - 1, za - 2)
    metric = {
        z: [
            f"/storms/{STORM}/metrics/miou/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
            for t in tiles_at(storm, z)
        ]
        for z in zooms
    }
    imagery = [
        f"/storms/{STORM}/imagery/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
        for t in tiles_at(storm, za - 2)
    ]
    results: dict[str, float] = {}
    with (
        private_redis() as redis_url,
        private_redis() as tile_cache_url,
        tempfile.TemporaryDirectory() as tmp_name,
    ):
        tmp = Path(tmp_name)
        env = {"IOU_MAPS_DATA_DIR": str(data_dir), "IOU_MAPS_MODEL": MODEL, "REDIS_URL": redis_url}
        log("precomputing the storm (iou-maps precompute) ...")
        subprocess.run(
            [sys.executable, "-c", "from iou_maps.cli.app import app; app()", "precompute", STORM],
            check=True, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with ServiceProcess(
            data_dir, redis_url, model=MODEL, workers=2, log_path=args.out / "service.log",
            tile_cache_url=tile_cache_url,
        ) as svc:  # fmt: skip
            client = Client(svc.url)
            bodies: dict[str, bytes] = {}
            for z in zooms:
                bodies.update(warm(client, metric[z], kept=True))
            warm(client, imagery, kept=False)
            warm(client, imagery, kept=False)  # the second from the imagery tile cache
            client.close()
            for z in zooms:
                results[f"metric_z{z}_rps"] = wrk(svc.url, metric[z], args.duration, tmp)
                log(
                    f"metric z{z} ({len(metric[z])} tiles): {results[f'metric_z{z}_rps']:.0f} req/s"
                )
            results["cached_imagery_rps"] = wrk(svc.url, imagery, args.duration, tmp)
            log(f"imagery z{za - 2}: {results['cached_imagery_rps']:.0f} req/s")
        results["static_rps"] = nginx_rps(bodies, args.duration, tmp)
        log(f"nginx, the same metric tiles: {results['static_rps']:.0f} req/s")
    results["cached_metric_rps"] = min(results[f"metric_z{z}_rps"] for z in zooms)
    results["cached_vs_static"] = results["cached_metric_rps"] / results["static_rps"]
    print(" ".join(f"{k}={v:.0f}" for k, v in results.items() if k.startswith("metric_z")))
    last = ("cached_metric_rps", "cached_imagery_rps", "static_rps", "cached_vs_static")
    print(
        " ".join(
            f"{k}={results[k]:.0f}" if k != last[-1] else f"{k}={results[k]:.4f}" for k in last
        )
    )


if __name__ == "__main__":
    main()
