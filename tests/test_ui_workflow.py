"""The main workflows through the running app with gradio_client: what a browser would call."""

import json
import time

import pytest
from gradio_client import handle_file

from tests.ui_fixtures import make_images

pytest_plugins = ["tests.ui_fixtures"]
pytestmark = pytest.mark.timeout(600)


def _wait(fn, ok, timeout=240.0, every=0.3):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if ok(last):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out; last value: {last!r}")


def _train_args(**overrides):
    from ui.train_tab import _fields, config_to_form_values

    names = [n for n, _, _ in _fields()]
    return config_to_form_values(names, overrides)


def _pre_args(**overrides):
    from ui.preprocess_tab import _fields

    return [overrides.get(n, d) for n, _, d in _fields()]


def test_create_library_export_generate(app, tmp_path):
    from embeddings.formats import load_embedding

    c = app.client()
    msg, name, _ = c.predict("tiny", "uicat", "cat", 2, "text", "safetensors", False, api_name="/create_embedding")
    assert name == "uicat" and "uicat" in msg
    emb = load_embedding(app.data.embeddings / "uicat.safetensors")
    assert emb.num_vectors == 2 and emb.metadata["base_model"] == "tiny"
    # overwrite protection: a short message, the file untouched
    with pytest.raises(Exception, match="already exists"):
        c.predict("tiny", "UICAT", "dog", 1, "text", "safetensors", False, api_name="/create_embedding")
    assert load_embedding(app.data.embeddings / "uicat.safetensors").equal(emb)

    (app.data.embeddings / "broken.pt").write_bytes(b"not a pickle")
    table, _ = c.predict(None, api_name="/library")
    rows = {r[0]: r for r in table["data"]}
    assert rows["uicat"][1] == 2 and rows["uicat"][6] == "ok"
    assert rows["broken"][6] == "skipped" and rows["broken"][7]

    norms, summary, _ = c.predict("uicat", api_name="/inspect")
    assert len(norms["data"]) == 2 and "uicat" in summary
    for fmt in ("pt", "png"):
        path = c.predict("uicat", fmt, api_name="/export")
        assert load_embedding(path).equal(emb), fmt

    images, info = c.predict("tiny", "a photo of uicat", "", 3, 2, 5, 0, 0, 1, api_name="/generate")
    assert len(images) == 1 and "seed 3" in images[0]["caption"]
    assert "Embeddings used:** uicat" in info
    assert "noise by design" in info  # the tiny model's images are noise, and the page says so
    with pytest.raises(Exception, match="prompt"):
        c.predict("tiny", "  ", "", 3, 2, 5, 0, 0, 1, api_name="/generate")

    status, *_ = c.predict("uicat", "uicat2", api_name="/rename")
    assert (app.data.embeddings / "uicat2.safetensors").is_file()
    with pytest.raises(Exception, match="confirm"):
        c.predict("uicat2", False, api_name="/delete")
    c.predict("uicat2", True, api_name="/delete")
    assert not (app.data.embeddings / "uicat2.safetensors").exists()

    # adding a file: a good one is added, a broken one is reported by name
    src = tmp_path / "added.pt"
    src.write_bytes((app.data.exports / "uicat").joinpath("uicat.pt").read_bytes())
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x00" * 20)
    msg, *_ = c.predict([handle_file(str(src)), handle_file(str(bad))], api_name="/add_embeddings")
    assert "Added: **added**" in msg and "junk.safetensors" in msg


def test_preprocess_captions_train_interrupt_resume(app, tmp_path):
    from embeddings.formats import load_embedding

    c = app.client()
    c.predict("tiny", "pcat", "cat", 1, "text", "safetensors", False, api_name="/create_embedding")
    imgs = make_images(tmp_path / "src", n=3, size=96)
    status = c.predict("pset", [handle_file(str(p)) for p in imgs], None, "",
                       *_pre_args(width=64, height=64, captioner="blip", blip_model="tiny-blip"),
                       api_name="/preprocess")
    assert "pset" in status
    job = _wait(lambda: app.ctx.registry.latest("preprocess"), lambda j: j is not None and j.state.done)
    assert job.state.value == "finished", job.error
    items = sorted((app.data.datasets / "pset").glob("*.txt"))
    assert len(items) == 3 and all(p.read_text().strip() for p in items)
    grid = c.predict("pset", api_name="/captions")
    assert [r[1] for r in grid["data"]] == sorted(p.name for p in (app.data.datasets / "pset").glob("*.png"))
    grid["data"][0][2] = "a photo of a red toy"
    msg, _ = c.predict("pset", grid, api_name="/save_captions")
    assert "Saved 1 caption" in msg
    first = sorted((app.data.datasets / "pset").glob("*.png"))[0]
    assert first.with_suffix(".txt").read_text().strip() == "a photo of a red toy"

    # the schedule plot and its inline error
    plot, note = c.predict("0.005:5, 0.001", "stepped", 10, 0, 0, api_name="/lr_schedule")
    assert [p[1] for p in plot["data"]][:1] == [0.005] and plot["data"][-1][1] == 0.001
    _, note = c.predict("0.005:abc", "stepped", 10, 0, 0, api_name="/lr_schedule")
    assert note.startswith("**Learning rate:**")

    summary, details = c.predict("pset", "pcat", "subject_filewords", 64, api_name="/dataset_check")
    assert "3 image(s)" in summary and "trained at: 64x64" in details and "prompt:" not in details

    args = _train_args(embedding="pcat", dataset="pset", model="tiny", resolution=64, max_steps=10,
                       preview_every=5, save_every=5, preview_steps=2, snapshot_formats=["safetensors", "png"],
                       lr="0.01")
    msg = c.predict(*args, api_name="/start_training")
    assert "pcat" in msg
    job = _wait(lambda: app.ctx.registry.latest("train"), lambda j: j is not None and j.state.done)
    assert job.state.value == "finished", job.error
    live = json.loads(c.predict("", api_name="/train_live"))  # what a newly opened page gets
    status, delta, log = live["status"], live["charts"], live["log"]
    assert "step 10/10" in status and live["refresh"]
    gallery, downloads = c.predict(api_name="/train_files")  # the Sent State stays server-side
    assert delta["reset"] and [s for s, _ in delta["loss"]["loss"]] == list(range(1, 11))
    assert set(delta["loss"]) == {"loss", "smoothed"} and delta["norms"]["v0"]
    assert len(gallery) >= 2 and "step 5" in gallery[0]["caption"]
    assert "training finished at step 10" in log and log.index("training finished") < log.index("dataset")  # newest first
    suffixes = {p.rsplit(".", 1)[-1] for p in downloads}
    assert {"safetensors", "png"} <= suffixes
    for p in downloads:
        assert load_embedding(p).step == 10

    # a start on an embedding already at the target step says why nothing was trained
    c.predict(*args, api_name="/start_training")
    idle = _wait(lambda: app.ctx.registry.latest("train"), lambda j: j is not job and j.state.done)
    assert idle.result["stopped"] == "nothing to do"
    status = json.loads(c.predict("", api_name="/train_live"))["status"]
    assert "<strong>Nothing trained:</strong> nothing to train: pcat is already at step 10" in status

    # restore settings: picking the trained embedding fills the form with its settings
    restored = c.predict("pcat", api_name="/restore_settings")
    names = [n for n, _, _ in __import__("ui.train_tab", fromlist=["_fields"])._fields()]
    assert restored[names.index("max_steps")] == 10 and restored[names.index("lr")] == "0.01"

    # a long run, interrupted, then resumed; a second start while one runs is queued
    long_args = _train_args(embedding="pcat", dataset="pset", model="tiny", resolution=64, max_steps=5000,
                            preview_every=0, save_every=0, lr="0.01")
    c.predict(*long_args, api_name="/start_training")
    job = _wait(lambda: app.ctx.registry.latest("train"),
                lambda j: j.last("progress") is not None and j.last("progress").data.get("step", 0) > 12)
    queued = c.predict(*long_args, api_name="/start_training")
    assert queued.startswith("Queued")
    second = app.ctx.registry.latest("train")
    assert second is not job and second.state.value == "queued"
    second.request_stop()
    assert "Interrupt requested" in c.predict(api_name="/interrupt")
    assert job.wait(120).value == "interrupted"
    stopped_at = job.last("progress").data["step"]
    msg = c.predict(api_name="/resume")
    assert msg.startswith("Resumed")
    resumed = _wait(lambda: app.ctx.registry.latest("train"),
                    lambda j: j.last("progress") is not None and j.last("progress").data.get("step", 0) > stopped_at)
    assert resumed.title.startswith("resume")
    c.predict(api_name="/interrupt")
    assert resumed.wait(120).value == "interrupted"
    # one timeline: the resumed run's view holds the steps before the interrupt too, in absolute steps
    live = json.loads(c.predict("", api_name="/train_live"))
    status, end = live["status"], resumed.last("progress").data["step"]
    steps = [s for s, _ in live["charts"]["loss"]["loss"]]
    assert steps[0] == 11 and steps[-1] == end and stopped_at in steps  # pcat was at step 10
    assert f"step {end}/5000" in status


def test_failing_buttons_say_why_in_a_line(app):
    """Start with no embedding picked, or a dataset that is not there, is refused in the page
    (nothing queued to fail later); a bad schedule names the box by its label; Export with
    nothing picked says to pick one."""
    c = app.client()
    c.predict("tiny", "fcat", "cat", 1, "text", "safetensors", False, api_name="/create_embedding")
    before = len(app.ctx.registry.jobs("train"))
    with pytest.raises(Exception, match="Pick the embedding to train") as e:
        c.predict(*_train_args(dataset="pset", max_steps=5), api_name="/start_training")
    assert "Traceback" not in str(e.value)
    with pytest.raises(Exception, match="dataset 'no-such-set': no such folder"):
        c.predict(*_train_args(embedding="fcat", dataset="no-such-set", max_steps=5), api_name="/start_training")
    with pytest.raises(Exception, match=r"Learning rate \(lr\): .*'abc'"):
        c.predict(*_train_args(embedding="fcat", dataset="no-such-set", lr="0.01:abc", max_steps=5),
                  api_name="/start_training")
    assert len(app.ctx.registry.jobs("train")) == before  # nothing was queued
    with pytest.raises(Exception, match="Pick an embedding first"):
        c.predict(None, "pt", api_name="/export")
