// The console's one script (README, "See what it does"): no framework, no build step, nothing fetched
// but this service's own endpoints, the public ones a client uses. Paths are relative to
// /console, so the page works behind a proxy's path prefix too.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 2000;
  const WINDOW_S = 300; // the charts' last five minutes
  const DEBOUNCE_MS = 150;
  const CHARTS = [
    ["rps", "Requests/s", 1],
    ["p50", "p50 latency (ms)", 2],
    ["p99", "p99 latency (ms)", 2],
    ["batch", "Mean batch size", 1],
    ["queue", "Queue depth", 0],
    ["errors", "Errors/s", 2],
  ];
  const state = { models: [], model: null, asked: 0, timer: 0, history: {}, last: null, traces: [] };

  // --- tabs --------------------------------------------------------------------------------
  const tabs = [$("tab-try"), $("tab-watch")];
  function show(tab) {
    for (const each of tabs) {
      const selected = each === tab;
      each.setAttribute("aria-selected", String(selected));
      each.tabIndex = selected ? 0 : -1;
      $(each.getAttribute("aria-controls")).hidden = !selected;
    }
    if (tab.id === "tab-watch") pollTraces();
  }
  for (const tab of tabs) {
    tab.addEventListener("click", () => show(tab));
    tab.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
      const next = tabs[(tabs.indexOf(tab) + 1) % tabs.length];
      show(next);
      next.focus();
    });
  }

  async function call(path, options) {
    const started = performance.now();
    const response = await fetch(path, options);
    const ms = performance.now() - started;
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { response, body, ms };
  }

  // --- try a model ---------------------------------------------------------------------------
  async function loadModels() {
    const { response, body } = await call("v1/models");
    if (!response.ok) {
      $("status").textContent = `Could not list the models: ${(body && body.error) || response.status}`;
      return;
    }
    state.models = body.models;
    const select = $("model");
    select.replaceChildren(...state.models.map((m) => new Option(`${m.name} (${m.task})`, m.name)));
    if (!state.models.length) {
      $("status").textContent = "No model is being served.";
      return;
    }
    await choose(state.models[0].name);
  }

  async function choose(name) {
    const model = state.models.find((m) => m.name === name);
    state.model = model;
    const { response, body } = await call(`v2/models/${encodeURIComponent(name)}`);
    const versions = response.ok ? body.versions : [model.version];
    $("version").replaceChildren(...versions.map((v) => new Option(v, v)));
    $("version").value = model.version;
    $("image-input").hidden = model.task !== "image-classification";
    $("text-input").hidden = model.task !== "text-classification";
    $("tensor-input").hidden = model.task !== "tensors";
    const task = {
      "image-classification": "Draw, upload or pick an image: it is classified as you draw.",
      "text-classification": "Type a sentence: it is classified as you type.",
      tensors: "Edit the tensors and run them. The request goes to the version chosen above.",
    }[model.task];
    const newest = model.task === "tensors" ? "" : ` The task endpoint answers with version ${model.version}.`;
    $("about").textContent = `${task}${newest}`;
    $("version").disabled = model.task !== "tensors";
    if (model.task === "tensors" && response.ok) $("tensors").value = example(body);
    clearAnswer();
  }

  function example(metadata) {
    // One row of every input, of the shape and type the metadata declares (a free axis: 1).
    const inputs = metadata.inputs.map((spec) => {
      const shape = spec.shape.map((d) => (d < 0 ? 1 : d));
      const count = shape.reduce((a, b) => a * b, 1);
      const fill = spec.datatype === "BYTES" ? "" : spec.datatype === "BOOL" ? false : 0;
      return JSON.stringify({ name: spec.name, datatype: spec.datatype, shape, data: new Array(count).fill(fill) });
    });
    return `{"inputs": [\n  ${inputs.join(",\n  ")}\n]}`;
  }

  function clearAnswer() {
    $("label").textContent = "none yet";
    $("bars").replaceChildren();
    $("outputs").hidden = true;
    for (const id of ["answer-version", "latency", "trace-id", "request-id"]) $(id).textContent = "-";
  }

  function later(ask) {
    clearTimeout(state.timer);
    state.timer = setTimeout(ask, DEBOUNCE_MS);
  }

  async function ask(path, body) {
    const asked = ++state.asked;
    $("status").textContent = "Asking...";
    const { response, body: answer, ms } = await call(path, {
      method: "POST", headers: { "content-type": "application/json" }, body,
    });
    if (asked !== state.asked) return; // a newer question was asked meanwhile
    $("latency").textContent = `${ms.toFixed(1)} ms`;
    $("trace-id").textContent = response.headers.get("x-trace-id") || "tracing is off (ORTSERVE_TRACING=true)";
    $("request-id").textContent = response.headers.get("x-request-id") || "-";
    if (!response.ok) {
      $("status").textContent = `Error ${response.status}: ${(answer && answer.error) || "no message"}`;
      return;
    }
    $("status").textContent = "Answered.";
    $("answer-version").textContent = answer.model_version || "-";
    if (answer.predictions) showPrediction(answer.predictions[0]);
    else showOutputs(answer.outputs);
  }

  function showPrediction(prediction) {
    const labels = state.model.labels;
    $("label").textContent = prediction.label;
    $("outputs").hidden = true;
    $("bars").replaceChildren(...prediction.probabilities.map((p, i) => {
      const item = document.createElement("li");
      if (i === prediction.index) item.className = "chosen";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = labels[i] + (i === prediction.index ? " (chosen)" : "");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${(100 * p).toFixed(1)}%`;
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = `${(100 * p).toFixed(1)}%`;
      const track = document.createElement("span");
      track.className = "track";
      track.append(bar);
      item.append(name, track, value);
      return item;
    }));
  }

  function showOutputs(outputs) {
    $("label").textContent = "(tensors)";
    $("bars").replaceChildren();
    const text = outputs.map((o) => `${o.name} ${o.datatype} [${o.shape.join(", ")}]\n${JSON.stringify(o.data).slice(0, 4000)}`);
    $("outputs").textContent = text.join("\n\n");
    $("outputs").hidden = false;
  }

  function predictPath() {
    return `v1/models/${encodeURIComponent(state.model.name)}:predict`;
  }

  // the drawing pad: light strokes on dark, as the training images are
  const pad = $("pad");
  const pen = pad.getContext("2d");
  let drawing = false;
  let sent = null; // the image file last shown, sent as it is until the person draws on it
  function blank() {
    pen.fillStyle = "#000";
    pen.fillRect(0, 0, pad.width, pad.height);
    sent = null;
  }
  function point(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
  }
  function askPad() {
    const b64 = sent || pad.toDataURL("image/png").split(",")[1];
    ask(predictPath(), JSON.stringify({ instances: [{ b64 }] }));
  }
  pad.addEventListener("pointerdown", (event) => {
    drawing = true;
    sent = null;
    pad.setPointerCapture(event.pointerId);
    pen.strokeStyle = "#fff";
    pen.lineWidth = 22;
    pen.lineCap = pen.lineJoin = "round";
    pen.beginPath();
    pen.moveTo(...point(event));
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    pen.lineTo(...point(event));
    pen.stroke();
    later(askPad);
  });
  for (const end of ["pointerup", "pointercancel"]) {
    pad.addEventListener(end, () => {
      if (drawing) later(askPad);
      drawing = false;
    });
  }
  $("clear").addEventListener("click", () => {
    blank();
    clearAnswer();
  });

  function showImage(blob) {
    // Sent as it is (the service resizes, greys and inverts a light background itself);
    // shown on the pad, fitted.
    const reader = new FileReader();
    reader.onload = () => {
      const b64 = String(reader.result).split(",")[1];
      const image = new Image();
      image.onload = () => {
        blank();
        const scale = Math.min(pad.width / image.width, pad.height / image.height);
        const w = image.width * scale, h = image.height * scale;
        pen.imageSmoothingEnabled = false;
        pen.drawImage(image, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
        sent = b64;
        askPad();
      };
      image.onerror = () => { $("status").textContent = "That file is not an image this browser can show."; };
      image.src = String(reader.result);
    };
    reader.readAsDataURL(blob);
  }
  $("upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) showImage(file);
  });
  $("sample").addEventListener("change", async (event) => {
    if (!event.target.value) return;
    const response = await fetch(`console/assets/samples/${event.target.value}`);
    showImage(await response.blob());
  });
  $("text").addEventListener("input", () => {
    const text = $("text").value;
    if (text.trim()) later(() => ask(predictPath(), JSON.stringify({ instances: [text] })));
  });
  $("run").addEventListener("click", () => {
    const model = encodeURIComponent(state.model.name);
    const version = encodeURIComponent($("version").value);
    ask(`v2/models/${model}/versions/${version}/infer`, $("tensors").value);
  });
  $("tensors").addEventListener("input", () => later(() => $("run").click()));
  $("model").addEventListener("change", (event) => choose(event.target.value));

  // --- watch the server ------------------------------------------------------------------
  function quantile(buckets, q) {
    // Prometheus' histogram_quantile over cumulative [upper bound, count] buckets.
    const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
    if (total <= 0) return null;
    const rank = q * total;
    let below = 0, lower = 0;
    for (const [bound, count] of buckets) {
      if (count >= rank) {
        if (bound === null) return lower;
        return lower + ((bound - lower) * (rank - below)) / Math.max(count - below, 1e-12);
      }
      below = count;
      if (bound !== null) lower = bound;
    }
    return lower;
  }

  function between(before, now, seconds) {
    const was = before || { requests: 0, errors: 0, batches: 0, batch_rows: 0, latency: [] };
    const rate = (key) => Math.max(0, now[key] - was[key]) / seconds;
    const buckets = now.latency.map(([bound, count], i) => [bound, Math.max(0, count - ((was.latency[i] || [])[1] || 0))]);
    const batches = now.batches - was.batches;
    const p50 = quantile(buckets, 0.5), p99 = quantile(buckets, 0.99);
    return {
      rps: rate("requests"), errors: rate("errors"), queue: now.queue_depth,
      batch: batches > 0 ? (now.batch_rows - was.batch_rows) / batches : 0,
      p50: p50 === null ? 0 : p50 * 1000, p99: p99 === null ? 0 : p99 * 1000,
    };
  }

  async function pollSummary() {
    try {
      const { response, body } = await call("console/summary");
      if (!response.ok) {
        $("watch-status").textContent = `Could not read the figures: ${(body && body.error) || response.status}`;
        return;
      }
      const last = state.last;
      if (last) {
        const seconds = Math.max(body.time - last.time, 1e-3);
        for (const [name, now] of Object.entries(body.models)) {
          const series = (state.history[name] ||= []);
          series.push({ time: body.time, ...between(last.models[name], now, seconds) });
          while (series.length && series[0].time < body.time - WINDOW_S) series.shift();
        }
        drawCharts();
      }
      state.last = body;
      const workers = body.workers > 1 ? `, all ${body.workers} worker processes` : "";
      $("watch-status").textContent = `Figures every 2 seconds over the last 5 minutes${workers}.`;
    } finally {
      setTimeout(pollSummary, POLL_MS);
    }
  }

  const SVG = "http://www.w3.org/2000/svg";
  function chart(figure, label, points, digits) {
    const width = 160, height = 48;
    const values = points.map((p) => p.value);
    const top = Math.max(...values, 1e-9);
    const now = values.length ? values[values.length - 1] : 0;
    const svg = figure.querySelector("svg");
    const line = svg.querySelector("polyline");
    const step = values.length > 1 ? width / (values.length - 1) : width;
    line.setAttribute("points", values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`).join(" "));
    const text = `${label}: ${now.toFixed(digits)} now, ${top.toFixed(digits)} at most`;
    svg.setAttribute("aria-label", `${text}, over the last ${Math.round(values.length * POLL_MS / 1000)} seconds`);
    figure.querySelector("figcaption").textContent = text;
    figure.dataset.now = String(now);
  }

  function drawCharts() {
    const holder = $("charts");
    for (const [name, series] of Object.entries(state.history)) {
      let card = holder.querySelector(`[data-model="${CSS.escape(name)}"]`);
      if (!card) {
        card = document.createElement("section");
        card.className = "card";
        card.dataset.model = name;
        const heading = document.createElement("h3");
        heading.textContent = name;
        card.append(heading);
        for (const [key] of CHARTS) {
          const figure = document.createElement("figure");
          figure.dataset.figure = key;
          const svg = document.createElementNS(SVG, "svg");
          svg.setAttribute("viewBox", "0 0 160 48");
          svg.setAttribute("role", "img");
          svg.append(document.createElementNS(SVG, "polyline"));
          figure.append(svg, document.createElement("figcaption"));
          card.append(figure);
        }
        holder.append(card);
      }
      for (const [key, label, digits] of CHARTS) {
        chart(card.querySelector(`[data-figure="${key}"]`), label, series.map((p) => ({ value: p[key] })), digits);
      }
    }
  }

  async function pollTraces() {
    if ($("watch").hidden) return;
    const { response, body } = await call("console/traces");
    if (!response.ok) return;
    $("traces-note").textContent = body.tracing
      ? `The slowest recent traced requests, of every worker process (sampling ${body.sample}); choose one to see where its time went.`
      : "Tracing is off: start the server with --tracing (ORTSERVE_TRACING=true) to see slow requests' spans.";
    state.traces = body.traces;
    $("traces").querySelector("tbody").replaceChildren(...body.traces.map((t, i) => {
      const row = document.createElement("tr");
      const open = document.createElement("button");
      open.type = "button";
      open.textContent = t.name;
      open.setAttribute("aria-label", `Spans of ${t.name}, ${t.duration_ms.toFixed(2)} ms, trace ${t.trace_id}`);
      open.addEventListener("click", () => showTrace(i));
      const cells = [open, t.attributes.model || "-", String(t.attributes.status || "-"),
        `${t.duration_ms.toFixed(2)} ms`, new Date(t.ended_at * 1000).toLocaleTimeString()];
      row.append(...cells.map((c) => {
        const cell = document.createElement("td");
        cell.append(c);
        return cell;
      }));
      return row;
    }));
  }

  function showTrace(index) {
    const t = state.traces[index];
    $("trace-title").textContent = `${t.name}: ${t.duration_ms.toFixed(2)} ms, trace ${t.trace_id}`;
    $("spans").replaceChildren(...t.spans.map((s) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = s.name;
      const track = document.createElement("span");
      track.className = "track";
      const bar = document.createElement("span");
      bar.className = "bar";
      const total = Math.max(t.duration_ms, 1e-6);
      bar.style.marginLeft = `${Math.min(100, (100 * s.start_ms) / total).toFixed(1)}%`;
      bar.style.width = `${Math.max(0.5, Math.min(100, (100 * s.duration_ms) / total)).toFixed(1)}%`;
      track.append(bar);
      const facts = Object.entries(s.attributes).map(([k, v]) => `${k} ${typeof v === "number" ? +v.toFixed(3) : v}`);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = `${s.duration_ms.toFixed(3)} ms from +${s.start_ms.toFixed(3)} ms${facts.length ? "; " + facts.join(", ") : ""}`;
      item.append(name, track, value);
      return item;
    }));
    $("trace-detail").hidden = false;
  }

  blank();
  loadModels();
  pollSummary();
  setInterval(pollTraces, POLL_MS);
})();
