// A PMTiles export of IoU Maps on a MapLibre map, read with HTTP range requests from any
// static server (one that answers Range requests): ?url=<metric archive>
// [&imagery=<imagery archive>][&opacity=0..1].
import * as maplibregl from "./vendor/maplibre-gl/maplibre-gl.mjs";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const metricUrl = new URL(params.get("url") || "export.pmtiles", location.href).href;
const imageryUrl = params.get("imagery") && new URL(params.get("imagery"), location.href).href;

if (params.has("opacity")) $("opacity").value = params.get("opacity");

const protocol = new pmtiles.Protocol();
maplibregl.addProtocol("pmtiles", protocol.tile);

function legend(meta) {
  const stops = meta.legend_stops || [];
  if (!stops.length) return;
  const [lo, hi] = meta.rescale || [0, 1];
  $("legend-bar").style.background = "linear-gradient(to right, " +
    stops.map((s) => `${s.color} ${((s.value - lo) / (hi - lo)) * 100}%`).join(", ") + ")";
  $("legend-min").textContent = lo;
  $("legend-max").textContent = hi;
}

async function main() {
  const archive = new pmtiles.PMTiles(metricUrl);
  protocol.add(archive);
  const [header, meta] = await Promise.all([archive.getHeader(), archive.getMetadata()]);
  $("title").textContent = meta.name || "PMTiles export";
  $("description").textContent = meta.description || "";
  legend(meta);

  const sources = {
    metric: { type: "raster", url: `pmtiles://${metricUrl}`, tileSize: 256 },
  };
  const layers = [];
  if (imageryUrl) {
    protocol.add(new pmtiles.PMTiles(imageryUrl));
    sources.imagery = { type: "raster", url: `pmtiles://${imageryUrl}`, tileSize: 256 };
    layers.push({ id: "imagery", type: "raster", source: "imagery" });
  }
  layers.push({
    id: "metric", type: "raster", source: "metric",
    paint: { "raster-opacity": parseFloat($("opacity").value), "raster-resampling": "nearest" },
  });
  const map = new maplibregl.Map({
    container: "map",
    style: { version: 8, sources, layers },
    bounds: [[header.minLon, header.minLat], [header.maxLon, header.maxLat]],
    fitBoundsOptions: { padding: 40 },
    maxZoom: 22,
    attributionControl: { compact: true, customAttribution: meta.attribution || "" },
    canvasContextAttributes: { preserveDrawingBuffer: true },  // the page can be captured
  });
  window.iouMap = map;
  $("opacity").addEventListener("input", (e) =>
    map.setPaintProperty("metric", "raster-opacity", parseFloat(e.target.value)));
  map.on("error", (e) => { $("status").textContent = `error: ${e.error && e.error.message}`; });
  map.once("idle", () => {
    $("status").textContent = "tiles drawn";
    document.body.dataset.ready = "1";
  });
}

main().catch((err) => { $("status").textContent = `error: ${err.message}`; });
