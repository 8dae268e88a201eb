// Train tab charts: loss and vector norms drawn on <canvas>, fed with only the new points.
//
// The page's poller (train_live.js) hands over a small delta (new points since the last tick, or a
// reset with the whole series); `window.tiCharts.apply(delta)` keeps every series in
// the page and redraws at most every REDRAW_MS, so a long run costs the browser (and the
// training process beside it on a small machine) almost nothing. window.tiCharts.series is what
// the page holds (tests read it: absolute steps after a resume).
(() => {
  if (window.tiCharts) return;
  const REDRAW_MS = 3000;
  const MAX_POINTS = 3000; // per series; halved (every other point) beyond it
  const COLORS = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777"];
  const PLACEHOLDER = {
    loss: "Loss per step (raw and smoothed) appears here once training starts.",
    norms: "The length of each learned vector appears here once training starts.",
  };
  const state = { job: null, series: { loss: {}, norms: {} }, timer: null, last: 0 };

  function add(chart, name, points) {
    let s = state.series[chart][name] || (state.series[chart][name] = []);
    for (const p of points) s.push(p);
    if (s.length > MAX_POINTS) state.series[chart][name] = s.filter((_, i) => i % 2 === 0 || i === s.length - 1);
  }

  function apply(delta) {  // the delta as an object (train_live.js) or its JSON text
    if (!delta) return;
    let d = delta;
    if (typeof delta === "string") { try { d = JSON.parse(delta); } catch (e) { return; } }
    if (d.reset || d.job !== state.job) state.series = { loss: {}, norms: {} };
    state.job = d.job;
    for (const chart of ["loss", "norms"]) {
      for (const [name, points] of Object.entries(d[chart] || {})) add(chart, name, points);
    }
    schedule(d.reset);
  }

  function schedule(now) {
    const wait = now ? 0 : Math.max(0, state.last + REDRAW_MS - Date.now());
    if (state.timer !== null && !now) return;
    clearTimeout(state.timer);
    state.timer = setTimeout(() => { state.timer = null; state.last = Date.now(); drawAll(); }, wait);
  }

  function drawAll() {
    if (document.visibilityState !== "visible") { state.timer = null; return; }
    draw("loss", "train_loss_canvas");
    draw("norms", "train_norms_canvas");
  }

  function draw(chart, id) {
    const canvas = document.getElementById(id);
    if (!canvas) return;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 400, h = canvas.clientHeight || 200;
    if (canvas.width !== w * dpr || canvas.height !== h * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const style = getComputedStyle(canvas);
    g.font = "12px " + style.fontFamily;
    g.fillStyle = style.color || "#444";
    const series = Object.entries(state.series[chart]).filter(([, pts]) => pts.length);
    if (!series.length) {
      g.textAlign = "center";
      g.fillText(PLACEHOLDER[chart], w / 2, h / 2);
      return;
    }
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const [, pts] of series) for (const [x, y] of pts) {
      if (!Number.isFinite(y)) continue;
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 += Math.abs(y1) * 0.05 + 1e-6; y0 -= Math.abs(y0) * 0.05 + 1e-6; }
    const L = 52, R = 10, T = 22, B = 22;
    const sx = (x) => L + (x - x0) / (x1 - x0) * (w - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (h - T - B);
    g.strokeStyle = "rgba(128,128,128,0.35)";
    g.lineWidth = 1;
    g.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const y = y0 + (y1 - y0) * i / 4;
      g.beginPath(); g.moveTo(L, sy(y)); g.lineTo(w - R, sy(y)); g.stroke();
      g.fillText(Number(y.toPrecision(3)).toString(), L - 4, sy(y) + 4);
    }
    g.textAlign = "center";
    g.fillText(`step ${x0}`, L + 24, h - 6);
    g.fillText(`step ${x1}`, w - R - 28, h - 6);
    let lx = L;
    series.forEach(([name, pts], i) => {
      const color = COLORS[i % COLORS.length];
      g.strokeStyle = color;
      g.lineWidth = name === "loss" ? 1 : 2;
      g.globalAlpha = name === "loss" ? 0.45 : 1;
      g.beginPath();
      let first = true;
      for (const [x, y] of pts) {
        if (!Number.isFinite(y)) { first = true; continue; }
        if (first) g.moveTo(sx(x), sy(y)); else g.lineTo(sx(x), sy(y));
        first = false;
      }
      g.stroke();
      g.globalAlpha = 1;
      g.fillStyle = color;
      g.textAlign = "left";
      g.fillRect(lx, 6, 10, 10);
      g.fillStyle = style.color || "#444";
      g.fillText(name, lx + 14, 15);
      lx += 24 + g.measureText(name).width;
    });
  }

  window.addEventListener("resize", () => schedule(true));
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") schedule(true); });
  window.tiCharts = { apply, series: () => state.series, redraw: () => schedule(true) };
})();
