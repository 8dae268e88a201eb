// Train tab live view: a light poller instead of a Gradio event every second.
//
// A Gradio event costs the browser about a tenth of a core at 1 Hz (its queue round trip and the
// status trackers of every output), whatever it changes. So, while the Train tab is shown and the
// page is visible, this asks the app's "train_live" endpoint (queue-free, same origin, so the
// login cookie applies) once a second with the cursor it got last time, and writes what changed
// straight into the page: the status line, the progress bar, the log, the per-layer heat map and
// the chart points (window.tiCharts). Only when a preview or a file was added does it press the
// hidden "train_refresh" button, a Gradio event that updates the gallery and the downloads.
// The cursor is opaque here: the server decides what changed (ui/train_tab.py, live_update).
(() => {
  if (window.tiLive) return;
  const PERIOD_MS = 1000; // unless the status slot says otherwise (data-period-ms, train_tab.POLL_SECONDS)
  const RETRY_MS = 5000; // after a failed request (server restarting, network)
  const GRACE_MS = 5000; // after the tab is selected, wait this long for its elements to appear
  const state = { cursor: "", timer: null, busy: false, wanted: 0, fails: 0, gen: 0 };

  function endpoint() {
    const root = (window.gradio_config && window.gradio_config.root) || window.location.href.split(/[?#]/)[0];
    return root.replace(/\/?$/, "/") + "gradio_api/run/train_live";
  }

  function shown() {
    if (document.visibilityState !== "visible") return false;
    const el = document.getElementById("train_status_live");
    return !!el && (el.checkVisibility ? el.checkVisibility() : el.offsetParent !== null);
  }

  function schedule(ms) {
    clearTimeout(state.timer);
    state.timer = setTimeout(tick, ms);
  }

  function put(id, html) {
    const el = document.getElementById(id);
    if (el && el.innerHTML !== html) el.innerHTML = html;
  }

  function refresh() {
    const el = document.getElementById("train_refresh");
    const button = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (button) button.click();
  }

  function apply(r) {
    state.cursor = r.cursor || "";
    if (r.status !== undefined) put("train_status_live", r.status);
    if (r.bar !== undefined) put("train_progress_live", r.bar);
    if (r.log !== undefined) put("train_log_live", r.log);
    if (r.heat !== undefined) put("train_heatmap_live", r.heat);
    if (r.charts && window.tiCharts) window.tiCharts.apply(r.charts);
    if (r.refresh) refresh();
  }

  async function tick() {
    state.timer = null;
    if (!shown()) {
      if (Date.now() < state.wanted) schedule(200); // the tab was just selected: its elements are coming
      return; // stopped: the Train tab's select, its mount, or the page becoming visible start it again
    }
    if (state.busy) return;
    state.busy = true;
    const gen = state.gen;
    const slot = document.getElementById("train_status_live");
    let wait = Number(slot && slot.dataset.periodMs) || PERIOD_MS;
    try {
      const res = await fetch(endpoint(), {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ data: [state.cursor] }),
      });
      if (!res.ok) throw new Error(`train_live: HTTP ${res.status}`);
      const body = await res.json();
      if (gen === state.gen) apply(JSON.parse(body.data[0])); // else the tab was rebuilt meanwhile: ask afresh
      state.fails = 0;
    } catch (e) {
      if (state.fails++ === 0) console.warn(e);
      wait = RETRY_MS;
    } finally {
      state.busy = false;
    }
    if (state.timer === null) schedule(gen === state.gen ? wait : 0);
  }

  // The Train tab was selected or (re)built: its elements may be new, so the next answer resends
  // everything the page shows (an empty cursor), and polling starts now.
  function now() {
    state.cursor = "";
    state.gen++;
    state.wanted = Date.now() + GRACE_MS;
    if (!state.busy) schedule(0);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.timer === null && !state.busy) schedule(0);
  });
  window.tiLive = { now, tick: () => schedule(0), cursor: () => state.cursor };
})();
