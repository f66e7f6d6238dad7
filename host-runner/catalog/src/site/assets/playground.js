// The playground: reads the sliders, asks the patterns' code (wasm-bindgen) for the decisions,
// and draws them as an SVG chart. `window.meshworkPlayground` exposes the last parameters and
// series, so a test can compare them with the same code run natively.
import init, { simulate_json } from "./meshwork_playground.js";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#0b5cad", "#c0392b", "#1e8449", "#b35900", "#6c3483"];
const root = document.getElementById("playground");
const name = root.dataset.playground;
const form = document.getElementById("params");
const chart = document.getElementById("chart");
const status = document.getElementById("status");

const state = { name, params: null, series: null, runs: 0, error: null };
window.meshworkPlayground = state;

function params() {
  const out = {};
  for (const input of form.querySelectorAll("input[type=range]")) {
    out[input.name] = Number(input.value);
    document.getElementById(`o-${input.name}`).textContent = input.value;
  }
  return out;
}

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function draw(series) {
  const W = 720, H = 320, L = 48, R = 150, T = 12, B = 32;
  while (chart.lastChild && chart.lastChild.nodeName !== "title") chart.removeChild(chart.lastChild);
  const columns = series.columns;
  const max = Math.max(1, ...series.rows.flat());
  const n = series.rows.length;
  const x = (i) => L + (i / Math.max(1, n - 1)) * (W - L - R);
  const y = (v) => H - B - (v / max) * (H - T - B);
  chart.appendChild(el("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  chart.appendChild(el("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  chart.appendChild(el("text", { x: L - 6, y: T + 8, "text-anchor": "end" }, String(max)));
  chart.appendChild(el("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0"));
  chart.appendChild(el("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `${(n * series.bucket_ms) / 1000} s`));
  columns.forEach((column, c) => {
    const points = series.rows.map((row, i) => `${x(i).toFixed(1)},${y(row[c]).toFixed(1)}`).join(" ");
    chart.appendChild(el("polyline", { points, fill: "none", stroke: COLORS[c % COLORS.length], "stroke-width": 1.5, "data-column": column }));
    chart.appendChild(el("rect", { x: W - R + 12, y: T + c * 20, width: 12, height: 12, fill: COLORS[c % COLORS.length] }));
    chart.appendChild(el("text", { x: W - R + 30, y: T + c * 20 + 10 }, column));
  });
  for (const cell of document.querySelectorAll("#totals td")) {
    cell.textContent = String(series.totals[cell.dataset.column]);
  }
}

function run() {
  const p = params();
  try {
    const series = JSON.parse(simulate_json(name, JSON.stringify(p)));
    state.params = p;
    state.series = series;
    state.runs += 1;
    state.error = null;
    draw(series);
    status.textContent = `Ran ${series.rows.length * series.bucket_ms / 1000} s of traffic.`;
  } catch (e) {
    state.error = String(e);
    status.textContent = `Error: ${e}`;
  }
}

await init();
form.addEventListener("input", run);
run();
