// IoU Maps viewer: storm imagery with a colour-mapped metric layer (predicted, true or error
// values), point lookups that show predicted and true side by side, and an optional basemap.
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const map = L.map("map", { zoomControl: true, attributionControl: false });
  map.setView([0, 0], 2);
  // Incomplete metric tiles are fetched again after this many ms, doubling up to the last.
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
  const OSM = {
    url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
    attribution: '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors',
  };
  let storms = {};
  let imagery = null;
  let metric = null;
  let basemap = null;
  let current = null;
  const attribution = L.control.attribution({ prefix: false });

  function status(text) { $("status").textContent = text; }

  // ------------------------------------------------------------------ incomplete tiles

  // Missing analysis tiles per metric tile on the map: those the service computes on request
  // (fetched again until none is left), and cells of far-out zooms that only precompute fills.
  const pending = new Map();
  const unprecomputed = new Map();

  function sum(m) { let n = 0; for (const v of m.values()) n += v; return n; }

  function showProgress() {
    const computing = sum(pending);
    const stale = sum(unprecomputed);
    const notice = $("computing");
    if (computing > 0) {
      notice.textContent = `computing ${computing} analysis tile${computing === 1 ? "" : "s"}…`;
    } else if (stale > 0) {
      notice.textContent = `${stale} cell${stale === 1 ? "" : "s"} not precomputed: zoom in, ` +
        `or run iou-maps precompute ${current ? current.name : ""}`;
    } else {
      notice.textContent = "";
    }
    notice.hidden = computing === 0 && stale === 0;
  }

  // A metric layer whose tiles are fetched with their headers: a tile drawn without some of
  // its analysis tiles (X-IoU-Missing > 0) is fetched again, with backoff (and Retry-After),
  // until it is complete.
  const MetricLayer = L.GridLayer.extend({
    initialize(url, options) {
      this._url = url;
      L.GridLayer.prototype.initialize.call(this, options);
      this.on("tileunload tileabort", (e) => this._forget(e.tile));
    },

    createTile(coords, done) {
      const img = document.createElement("img");
      img.alt = "";
      const url = L.Util.template(this._url, { z: coords.z, x: coords.x, y: coords.y });
      img.dataset.src = url;
      img._iou = { url, key: `${coords.z}/${coords.x}/${coords.y}`, z: coords.z, attempt: 0,
        timer: null, ctrl: null, done, first: true, objectUrl: null, gone: false };
      this._fetch(img);
      return img;
    },

    onRemove(m) {
      for (const key in this._tiles) this._forget(this._tiles[key].el);
      L.GridLayer.prototype.onRemove.call(this, m);
    },

    _forget(img) {
      const st = img && img._iou;
      if (!st || st.gone) return;
      st.gone = true;
      clearTimeout(st.timer);
      if (st.ctrl) st.ctrl.abort();
      if (st.objectUrl) URL.revokeObjectURL(st.objectUrl);
      pending.delete(st.key);
      unprecomputed.delete(st.key);
      showProgress();
    },

    _finish(img, err) {
      const st = img._iou;
      if (st.first) { st.first = false; st.done(err, img); }
    },

    async _fetch(img) {
      const st = img._iou;
      st.ctrl = new AbortController();
      let r, blob;
      try {
        r = await fetch(st.url, { signal: st.ctrl.signal });
        blob = r.status === 204 ? null : await r.blob();
      } catch (err) {
        if (!st.gone) this._finish(img, err);
        return;
      }
      if (st.gone) return;
      if (r.status === 204) {  // nothing to draw here
        this._finish(img, null);
        return;
      }
      if (!r.ok) {
        this._finish(img, new Error(`${r.status} ${st.url}`));
        return;
      }
      const missing = parseInt(r.headers.get("X-IoU-Missing") || "0", 10);
      const retryAfter = parseFloat(r.headers.get("Retry-After") || "0");
      const objectUrl = URL.createObjectURL(blob);
      img.onload = () => {
        if (st.objectUrl) URL.revokeObjectURL(st.objectUrl);
        st.objectUrl = objectUrl;
        this._finish(img, null);
      };
      img.src = objectUrl;
      const onDemand = current && st.z >= current.on_demand_minzoom;
      (onDemand ? pending : unprecomputed).set(st.key, missing);
      showProgress();
      if (missing > 0 && onDemand) {
        const backoff = BACKOFF_MS[Math.min(st.attempt, BACKOFF_MS.length - 1)];
        st.attempt += 1;
        st.timer = setTimeout(() => this._fetch(img), Math.max(backoff, retryAfter * 1000));
      }
    },
  });

  // ------------------------------------------------------------------ layers

  function source() { return $("source").value; }

  function metricQuery() {
    const q = new URLSearchParams({ source: source() });
    if ($("colormap").value) q.set("colormap_name", $("colormap").value);
    return "?" + q.toString();
  }

  async function updateLegend() {
    if (!current) return;
    const url = `/storms/${current.name}/metrics/${$("metric").value}/WebMercatorQuad/tilejson.json${metricQuery()}`;
    const r = await fetch(url);
    const tj = await r.json();
    if (!r.ok) { status(tj.detail); return; }
    const stops = tj.legend_stops || [];
    const [lo, hi] = tj.rescale;
    $("legend-bar").style.background = "linear-gradient(to right, " +
      stops.map((s) => `${s.color} ${((s.value - lo) / (hi - lo)) * 100}%`).join(", ") + ")";
    const labels = $("legend-labels").children;
    labels[0].textContent = lo;
    labels[1].textContent = ((lo + hi) / 2).toString();
    labels[2].textContent = hi;
    $("legend-caption").textContent = {
      predicted: `predicted ${tj.metric}`,
      true: `true ${tj.metric} (labelled tiles)`,
      error: "predicted − true: blue too low, red too high (mean absolute error when zoomed out)",
    }[tj.source];
  }

  function drawMetric() {
    if (metric) { map.removeLayer(metric); metric = null; }
    pending.clear();
    unprecomputed.clear();
    showProgress();
    if (!current || !$("show-metric").checked) return;
    const url = `/storms/${current.name}/metrics/${$("metric").value}/tiles/WebMercatorQuad/{z}/{x}/{y}.png${metricQuery()}`;
    metric = new MetricLayer(url, {
      minZoom: current.minzoom, maxNativeZoom: Math.max(current.maxzoom, current.analysis_zoom),
      maxZoom: 22, opacity: parseFloat($("opacity").value), bounds: bounds(current),
      className: "metric-layer",
    }).addTo(map);
    metric.on("load", () => status("metric tiles loaded"));
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

  // An online basemap (off by default: the viewer works offline), under everything else.
  function drawBasemap() {
    if (basemap) { map.removeLayer(basemap); basemap = null; map.removeControl(attribution); }
    if (!$("basemap").checked) return;
    basemap = L.tileLayer(OSM.url, {
      maxZoom: 19, attribution: OSM.attribution, className: "basemap-layer",
    }).addTo(map);
    basemap.bringToBack();
    attribution.addTo(map);
  }

  function bounds(s) {
    return L.latLngBounds([s.bounds[1], s.bounds[0]], [s.bounds[3], s.bounds[2]]);
  }

  // The metric menu and the class legend: the model's own classes, as the server lists them.
  function showClasses(s) {
    const menu = $("metric");
    const chosen = menu.value;
    menu.replaceChildren(...s.metrics.map((m) => {
      const o = document.createElement("option");
      o.value = o.textContent = m;
      return o;
    }));
    menu.value = s.metrics.includes(chosen) ? chosen : "miou";
    $("class-legend").replaceChildren(...(s.classes || []).map((c) => {
      const item = document.createElement("span");
      item.className = "class";
      const swatch = document.createElement("i");
      swatch.style.background = c.color;
      item.append(swatch, c.name);
      return item;
    }));
  }

  function selectStorm(name, view) {
    current = storms[name];
    showClasses(current);
    const sources = current.sources || ["predicted"];
    for (const o of $("source").options) {
      o.disabled = !sources.includes(o.value);
      o.title = o.disabled ? "this storm has no labels" : "";
    }
    if (!sources.includes(source())) $("source").value = "predicted";
    if (view) map.setView([view.lat, view.lon], view.zoom);
    else map.fitBounds(bounds(current));
    drawImagery();
    drawMetric();
  }

  // The view in the address (#zoom/lat/lon), so that a link opens the same place.
  function viewFromHash() {
    const parts = location.hash.slice(1).split("/").map(Number);
    if (parts.length !== 3 || parts.some((v) => !Number.isFinite(v))) return null;
    return { zoom: parts[0], lat: parts[1], lon: parts[2] };
  }

  map.on("moveend", () => {
    if (!current) return;
    const c = map.getCenter();
    history.replaceState(null, "", `#${map.getZoom()}/${c.lat.toFixed(6)}/${c.lng.toFixed(6)}`);
  });

  // ------------------------------------------------------------------ point lookup

  function num(v) { return v.toFixed(3); }

  // A class without an IoU is absent (from prediction and label): said so, never a number.
  function cell(v) { return v === null ? '<td class="v absent">absent</td>' : `<td class="v">${num(v)}</td>`; }

  function errorCell(p, t) {
    if (p === null || t === null) return '<td class="v">–</td>';
    const e = p - t;
    return `<td class="v">${e > 0 ? "+" : e < 0 ? "−" : ""}${num(Math.abs(e))}</td>`;
  }

  function popupHtml(body) {
    const labelled = body.true !== null;
    // The model's classes, in class-id order, as the point's values name them.
    const classes = Object.keys(body.predicted).filter((m) => m.startsWith("iou_"));
    const rows = [...classes.map((m) => [m.slice(4), m]), ["mIoU", "miou"], ["Dice", "dice"]]
      .map(([label, m]) => {
        const p = body.predicted[m];
        const cells = [cell(p)];
        if (labelled) cells.push(cell(body.true[m]), errorCell(p, body.true[m]));
        const cls = m === "miou" ? ' class="mean"' : "";
        return `<tr${cls}><td>${label}</td>${cells.join("")}</tr>`;
      }).join("");
    const head = labelled ? "<tr><th></th><th>predicted</th><th>true</th><th>error</th></tr>" :
      "<tr><th></th><th>predicted</th></tr>";
    const t = body.tile;
    const note = labelled ? "" : '<div class="note">no label here: predicted only</div>';
    return `<div class="metrics-popup"><b>${body.storm}</b> tile ${t.z}/${t.x}/${t.y}` +
      `<table>${head}${rows}</table>${note}` +
      "<small>IoU per class; mIoU is their mean over the classes shown with a value · " +
      `model ${body.model_id}${body.from_cache ? " · cached" : " · computed"}</small></div>`;
  }

  map.on("click", async (e) => {
    if (!current) return;
    const lon = e.latlng.lng.toFixed(7);
    const lat = e.latlng.lat.toFixed(7);
    const popup = L.popup({ maxWidth: 400 }).setLatLng(e.latlng).setContent("…").openOn(map);
    const r = await fetch(`/storms/${current.name}/point/${lon},${lat}`);
    const body = await r.json();
    if (!r.ok) { popup.setContent(`<div class="metrics-popup">${body.detail}</div>`); return; }
    popup.setContent(popupHtml(body));
  });

  $("storm").addEventListener("change", (e) => selectStorm(e.target.value));
  $("metric").addEventListener("change", drawMetric);
  $("source").addEventListener("change", drawMetric);
  $("colormap").addEventListener("change", drawMetric);
  $("show-metric").addEventListener("change", drawMetric);
  $("show-imagery").addEventListener("change", drawImagery);
  $("basemap").addEventListener("change", drawBasemap);
  $("opacity").addEventListener("input", (e) => { if (metric) metric.setOpacity(parseFloat(e.target.value)); });

  fetch("/storms").then((r) => r.json()).then((body) => {
    const select = $("storm");
    for (const s of body.storms) {
      storms[s.name] = s;
      const o = document.createElement("option");
      o.value = o.textContent = s.name;
      select.appendChild(o);
    }
    if (body.storms.length) selectStorm(body.storms[0].name, viewFromHash());
    else status("no storms ingested yet");
  });

  // For scripts and tests driving the page.
  window.iouMaps = { map, storms: () => storms, current: () => current };
})();
