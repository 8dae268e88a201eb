"""Does the page's polling slow training? Training it/s with no browser, one tab and three tabs.

Runs the real app on localhost with the tiny model, trains the same run (same seed, same data)
under each condition, and prints a table. The browser is Debian's Chromium through Playwright,
on the Train tab, so its poller (ui/static/train_live.js) asks for the job's news once a second as
a user's page would.

On a shared machine the it/s columns are noisy (a neighbour's load moves them more than the page
does); the browser's own CPU time per 100 training steps (all Chromium processes, from psutil) is
the steadier measure of what the page costs.

    .venv/bin/python benchmarks/bench_ui_polling.py [--steps 100] [--rounds 3] [--resolution 64]
    .venv/bin/python benchmarks/bench_ui_polling.py --synthetic 60   # the page's own cost, load-proof

`--synthetic SECONDS`: no training; a stand-in job emits a training run's events (loss, norms,
progress, a message now and then) at 4 steps/s, and the table gives the CPU the browser and the
server spend on the page (percent of one core). A busy neighbour hardly moves these numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
SETTLE_S = 3.0  # after opening the pages, before a run starts
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_cpu() -> dict[int, float]:
    """CPU seconds used so far by each Chromium process this script started (through Playwright)."""
    import psutil

    out: dict[int, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if "chrom" in proc.name().lower():
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


def browser_cpu_since(before: dict[int, float]) -> float:
    """Chromium CPU seconds spent since `before` by the processes alive now. A tab closed in
    between takes its time with it, so a sum of totals could go negative; per process it cannot."""
    return sum(max(0.0, now - before.get(pid, 0.0)) for pid, now in browser_cpu().items())


def train_once(app, steps: int, resolution: int, tag: str) -> dict:
    from training.config import TrainConfig
    from training.service import start_training

    config = TrainConfig(embedding="benchcat", dataset="benchset", model="tiny", resolution=resolution,
                         more_steps=steps, preview_every=0, save_every=0, lr="0.005", run_name=f"bench-{tag}")
    cpu0 = browser_cpu()
    job = start_training(app.ctx.registry, config, app.data)
    job.wait()
    browser_cpu_s = browser_cpu_since(cpu0)
    if job.state.value != "finished":
        raise SystemExit(f"{tag}: run ended {job.state.value}: {job.error}")
    prog = [e for e in job.events("progress") if e.data.get("phase") != "latents" and "step" in e.data]
    times = [(e.data["step"], e.time) for e in prog]
    # steady state: skip the first 10% (model warm-up, first-step allocations)
    start = max(1, len(times) // 10)
    (s0, t0), (s1, t1) = times[start], times[-1]
    rates = [e.data["it_s"] for e in prog[start:] if isinstance(e.data.get("it_s"), (int, float))]
    return {"it_s": (s1 - s0) / (t1 - t0), "median_reported": statistics.median(rates) if rates else float("nan"),
            "browser_cpu_per_100": 100 * browser_cpu_s / steps}


def synthetic_job(seconds: float, rate: float = 4.0):
    """A job function that logs what a training run logs, at `rate` steps per second."""
    import time

    from jobs import events

    def run(job):
        total = int(seconds * rate)
        t0 = time.monotonic()
        smoothed = 1.0
        for step in range(1, total + 1):
            loss = 0.5 + 0.5 / step ** 0.5
            smoothed = 0.9 * smoothed + 0.1 * loss
            job.emit(events.Loss(step=step, loss=loss, lr=0.005, smoothed=smoothed, epoch=step // 10))
            job.emit(events.Norms(step=step, norms={"clip_l": [0.3 + step * 1e-3, 0.31 + step * 1e-3]}))
            job.progress(step, total, step=step, it_s=rate, eta_s=(total - step) / rate, epoch=step // 10)
            if step % 40 == 0:
                job.message(f"step {step}: a message")
            time.sleep(max(0.0, t0 + step / rate - time.monotonic()))
        return {"stopped": "finished", "step": total}

    return run


def main_synthetic(seconds: float, rounds: int, tabs: tuple[int, ...] = (0, 1, 3)) -> None:
    import time

    import psutil
    from playwright.sync_api import sync_playwright

    from tests.ui_fixtures import running_app
    from workspace.datadir import DataDir

    data = DataDir.at(Path(tempfile.mkdtemp(prefix="bench-ui-")) / "data").ensure()
    me = psutil.Process()
    rows: dict[str, list[tuple[float, float]]] = {}
    with running_app(data) as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        for r in range(rounds):
            for n in tabs:
                pages = []
                for _ in range(n):
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(app.url)
                    page.get_by_role("tab", name="Train").click()
                    pages.append(page)
                time.sleep(2)
                cpu0, srv0, t0 = browser_cpu(), sum(me.cpu_times()[:2]), time.monotonic()
                job = app.ctx.registry.submit("train", f"synthetic {n}-{r}", synthetic_job(seconds))
                job.wait()
                wall = time.monotonic() - t0
                rows.setdefault(f"{n} tab(s) on Train" if n else "no browser", []).append(
                    (100 * browser_cpu_since(cpu0) / wall, 100 * (sum(me.cpu_times()[:2]) - srv0) / wall))
                for page in pages:
                    page.close()
        browser.close()
    import ui.train_tab

    print(f"\nsynthetic run: 4 steps/s for {seconds:.0f} s x {rounds} rounds, {os.cpu_count()} CPU threads, "
          f"Train tab polls every {ui.train_tab.POLL_SECONDS:g} s (medians; CPU in percent of one core)")
    print(f"{'condition':<18} {'browser CPU %':>14} {'server CPU %':>13}")
    for cond, values in rows.items():
        print(f"{cond:<18} {statistics.median(v[0] for v in values):>14.1f} "
              f"{statistics.median(v[1] for v in values):>13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synthetic", type=float, default=0.0, metavar="SECONDS",
                        help="no training: a stand-in job's events for SECONDS; the page's CPU cost")
    parser.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                        help="the Train tab's poll interval to measure (default: the tab's own)")
    parser.add_argument("--tabs", default="0,1,3", help="browser tab counts to measure (--synthetic)")
    args = parser.parse_args()
    if args.poll:
        import ui.train_tab

        ui.train_tab.POLL_SECONDS = args.poll
    if args.synthetic:
        main_synthetic(args.synthetic, args.rounds, tuple(int(n) for n in args.tabs.split(",")))
        return

    import time

    from embeddings.create import create_embedding
    from embeddings.formats import save_embedding
    from tests.ui_fixtures import make_images, running_app
    from workspace.datadir import DataDir

    data = DataDir.at(Path(tempfile.mkdtemp(prefix="bench-ui-")) / "data").ensure()
    make_images(data.datasets / "benchset", n=4, size=args.resolution)
    for p in (data.datasets / "benchset").glob("*.png"):
        p.with_suffix(".txt").write_text("a toy")
    conditions = ["no browser", "1 tab on Train", "3 tabs on Train"]
    results: dict[str, list[dict]] = {c: [] for c in conditions}
    with running_app(data) as app:
        save_embedding(create_embedding(app.ctx.model("tiny"), "benchcat", "cat", 2),
                       data.embeddings / "benchcat.safetensors")
        train_once(app, max(20, args.steps // 5), args.resolution, "warmup")
        if not Path(CHROMIUM).exists():
            print("chromium missing: only the no-browser condition")
            conditions = conditions[:1]
            for r in range(args.rounds):
                results["no browser"].append(train_once(app, args.steps, args.resolution, f"none-{r}"))
        else:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                # Conditions interleave round by round, so a noisy neighbour on a shared machine
                # hits all of them alike; the table shows medians.
                for r in range(args.rounds):
                    for cond in conditions:
                        n = 0 if cond == "no browser" else int(cond.split()[0])
                        pages = []
                        for _ in range(n):
                            page = browser.new_page()
                            page.goto(app.url)
                            page.get_by_role("tab", name="Train").click()
                            pages.append(page)
                        time.sleep(SETTLE_S if pages else 0)  # measure the page sitting open, not its loading
                        results[cond].append(train_once(app, args.steps, args.resolution, f"{n}-{r}"))
                        for page in pages:
                            page.close()
                browser.close()

    import ui.train_tab

    base = statistics.median(r["it_s"] for r in results["no browser"])
    print(f"\ntiny model, {args.steps} steps x {args.rounds} rounds at {args.resolution}px, "
          f"{os.cpu_count()} CPU threads, page polls every {ui.train_tab.POLL_SECONDS:g} s "
          "(medians; spread = min..max)")
    print(f"{'condition':<18} {'it/s (wall)':>12} {'spread':>14} {'it/s (reported)':>16} {'vs no browser':>14} "
          f"{'browser CPU s / 100 steps':>26}")
    for cond in conditions:
        walls = [r["it_s"] for r in results[cond]]
        rep = statistics.median(r["median_reported"] for r in results[cond])
        med = statistics.median(walls)
        cpu = statistics.median(r["browser_cpu_per_100"] for r in results[cond])
        print(f"{cond:<18} {med:>12.2f} {min(walls):>6.2f}..{max(walls):<6.2f} {rep:>16.2f} {100 * med / base:>13.1f}% "
              f"{cpu:>26.2f}")


if __name__ == "__main__":
    main()
