// IoU Maps viewer: storm imagery with a colour-mapped metric layer and point lookups.
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const map = L.map("map", { zoomControl: true, attributionControl: false });
  map.setView([0, 0], 2);
  let storms = {};
  let imagery = null;
  let metric = null;
  let current = null;

  function status(text) { $("status").textContent = text; }

  function metricQuery() {
    return "?colormap_name=" + encodeURIComponent($("colormap").value);
  }

  async function updateLegend() {
    if (!current) return;
    const url = `/storms/${current.name}/metrics/${$("metric").value}/WebMercatorQuad/tilejson.json${metricQuery()}`;
    const tj = await (await fetch(url)).json();
    const stops = tj.legend_stops || [];
    $("legend-bar").style.background = "linear-gradient(to right, " +
      stops.map((s) => `${s.color} ${s.value * 100}%`).join(", ") + ")";
    const labels = $("legend-labels").children;
    labels[0].textContent = tj.rescale[0];
    labels[1].textContent = ((tj.rescale[0] + tj.rescale[1]) / 2).toString();
    labels[2].textContent = tj.rescale[1];
  }

  function drawMetric() {
    if (metric) { map.removeLayer(metric); metric = null; }
    if (!current || !$("show-metric").checked) return;
    const url = `/storms/${current.name}/metrics/${$("metric").value}/tiles/WebMercatorQuad/{z}/{x}/{y}.png${metricQuery()}`;
    metric = L.tileLayer(url, {
      minZoom: current.minzoom, maxNativeZoom: Math.max(current.maxzoom, current.analysis_zoom),
      maxZoom: 22, opacity: parseFloat($("opacity").value), bounds: bounds(current),
      className: "metric-layer",
    }).addTo(map);
    metric.on("tileload", () => status("metric tiles loaded"));
    updateLegend();
  }

  function drawImagery() {
    if (imagery) { map.removeLayer(imagery); imagery = null; }
    if (!current || !$("show-imagery").checked) return;
    // WebP keeps the transparency around the scenes at ~1/15 the bytes of PNG and encodes
    // ~5x faster (PNG's zlib dominated an imagery tile's time).
    imagery = L.tileLayer(`/storms/${current.name}/imagery/tiles/WebMercatorQuad/{z}/{x}/{y}.webp`, {
      minZoom: current.minzoom, maxNativeZoom: current.maxzoom, maxZoom: 22,
      bounds: bounds(current), className: "imagery-layer",
    }).addTo(map);
    if (metric) metric.bringToFront();
  }

  function bounds(s) {
    return L.latLngBounds([s.bounds[1], s.bounds[0]], [s.bounds[3], s.bounds[2]]);
  }

  function selectStorm(name) {
    current = storms[name];
    map.fitBounds(bounds(current));
    drawImagery();
    drawMetric();
  }

  function fmt(v) { return v === null ? "–" : v.toFixed(3); }

  map.on("click", async (e) => {
    if (!current) return;
    const lon = e.latlng.lng.toFixed(7);
    const lat = e.latlng.lat.toFixed(7);
    const popup = L.popup().setLatLng(e.latlng).setContent("…").openOn(map);
    const r = await fetch(`/storms/${current.name}/point/${lon},${lat}`);
    const body = await r.json();
    if (!r.ok) { popup.setContent(`<div class="metrics-popup">${body.detail}</div>`); return; }
    const rows = Object.entries(body.metrics)
      .map(([k, v]) => `<tr><td>${k}</td><td class="v">${fmt(v)}</td></tr>`).join("");
    const t = body.tile;
    popup.setContent(`<div class="metrics-popup"><b>${body.storm}</b> tile ${t.z}/${t.x}/${t.y}` +
      `<table>${rows}</table><small>model ${body.model_id}` +
      `${body.from_cache ? " · cached" : " · computed"}</small></div>`);
  });

  $("storm").addEventListener("change", (e) => selectStorm(e.target.value));
  $("metric").addEventListener("change", drawMetric);
  $("colormap").addEventListener("change", drawMetric);
  $("show-metric").addEventListener("change", drawMetric);
  $("show-imagery").addEventListener("change", drawImagery);
  $("opacity").addEventListener("input", (e) => { if (metric) metric.setOpacity(parseFloat(e.target.value)); });

  fetch("/storms").then((r) => r.json()).then((body) => {
    const select = $("storm");
    for (const s of body.storms) {
      storms[s.name] = s;
      const o = document.createElement("option");
      o.value = o.textContent = s.name;
      select.appendChild(o);
    }
    if (body.storms.length) selectStorm(body.storms[0].name);
    else status("no storms ingested yet");
  });
})();
