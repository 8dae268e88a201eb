"""The web server as an attack surface: what it serves, who may call it, what it accepts."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

from tests.ui_fixtures import running_app

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["train_fixtures"]
pytestmark = pytest.mark.timeout(600)


def _get(url: str, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """Send `path` exactly as given (no client-side normalising of `..` or %-escapes)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_listen_without_auth_refuses_to_start():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "serve", "--listen", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--auth" in proc.stderr and "--insecure" in proc.stderr


def test_never_serves_files_outside_the_data_folder(data, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    inside = data.embeddings / "note.txt"
    inside.write_text("hello")
    (data.embeddings / "link-out.txt").symlink_to(secret)
    (data.embeddings / "link-repo.py").symlink_to(ROOT / "app.py")
    rel = os.path.relpath(secret, data.embeddings)  # ../../secret.txt, reached from inside the data folder
    with running_app(data) as app:
        status, body = _get(app.url, f"/gradio_api/file={inside}")
        assert status == 200 and body == b"hello"  # the data folder itself is served
        attempts = [
            "/gradio_api/file=/etc/passwd",
            f"/gradio_api/file={ROOT / 'app.py'}",
            f"/gradio_api/file={ROOT / 'ui' / 'app.py'}",
            f"/gradio_api/file={data.embeddings}/{rel}",
            f"/gradio_api/file={urllib.parse.quote(str(data.embeddings) + '/' + rel)}",
            f"/gradio_api/file={str(data.embeddings).replace('/', '%2F')}%2F..%2F..%2Fsecret.txt",
            f"/gradio_api/file={data.embeddings}/%2e%2e/%2e%2e/secret.txt",
            f"/gradio_api/file={data.embeddings / 'link-out.txt'}",
            f"/gradio_api/file={data.embeddings / 'link-repo.py'}",
            "/file=/etc/passwd",
            "/gradio_api/static/../../../../etc/passwd",
            "/gradio_api/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/assets/../../../../etc/passwd",
            "/../../../../etc/passwd",
            "/static/..%2f..%2f..%2fapp.py",
        ]
        passwd = Path("/etc/passwd").read_bytes()[:20]
        source = (ROOT / "app.py").read_bytes()[:40]
        for path in attempts:
            status, body = _get(app.url, path)
            assert b"SECRET" not in body and passwd not in body and source not in body, (path, status)
            assert status in (400, 403, 404, 405), (path, status)
        assert _get(app.url, "/")[0] == 200  # still serving


def test_with_auth_every_api_route_needs_the_login(data):
    inside = data.embeddings / "note.txt"
    inside.write_text("hello")
    with running_app(data, auth="ann:s3cret") as app:
        calls = [
            ("GET", "/config", None),
            ("GET", "/gradio_api/info", None),
            ("GET", f"/gradio_api/file={inside}", None),
            ("POST", "/gradio_api/call/create_plan", b'{"data": ["tiny", "x", "cat", 1, "text"]}'),
            ("POST", "/gradio_api/run/create_plan", b'{"data": ["tiny", "x", "cat", 1, "text"]}'),
            ("POST", "/gradio_api/queue/join", b'{"data": [], "fn_index": 0, "session_hash": "abc"}'),
            ("GET", "/gradio_api/queue/data?session_hash=abc", None),
            ("POST", "/gradio_api/upload", b"--x\r\n"),
        ]
        for method, path, body in calls:
            status, text = _get(app.url, path, {"Content-Type": "application/json"}, method, body)
            assert status in (401, 403), (path, status, text[:200])
            assert b"hello" not in text, path
        # with the login the API answers
        assert app.client(auth=("ann", "s3cret")).predict("tiny", "x", "cat", 1, "text", api_name="/create_plan")


def test_uploads_over_the_cap_are_refused(data, tmp_path):
    from ui.app import MAX_UPLOAD

    cap = int(MAX_UPLOAD.rstrip("mb")) * 1024 * 1024
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(cap + 1024 * 1024)
    with running_app(data) as app:
        from gradio.utils import get_upload_folder
        from gradio_client import handle_file

        uploads = Path(get_upload_folder())
        before = set(uploads.rglob("big.png"))
        with pytest.raises(Exception, match="(?i)too large|size|413|exceed"):
            app.client().predict([handle_file(str(big))], api_name="/add_embeddings")
        assert set(uploads.rglob("big.png")) == before  # nothing kept on disk
        assert _get(app.url, "/")[0] == 200


def test_two_tabs_press_start_at_once(tiny_model, data, tmp_path):
    """One job runs, the other is queued and says so; a third tab sees both in the queue."""
    from train_fixtures import make_dataset, make_embedding

    from tests.test_ui_workflow import _train_args

    make_embedding(tiny_model, data)
    make_dataset(data.datasets / "solid", n=2)
    with running_app(data) as app:
        args = _train_args(embedding="flatcol", dataset="solid", model="tiny", max_steps=400, resolution=64,
                           save_every=0, preview_every=0)
        replies: list[str] = []

        def press():
            replies.append(app.client().predict(*args, api_name="/start_training"))

        tabs = [threading.Thread(target=press) for _ in range(2)]
        for t in tabs:
            t.start()
        for t in tabs:
            t.join(120)
        assert sorted(r.split(" ")[0] for r in replies) == ["Queued", "Started"], replies
        assert "job(s) ahead" in next(r for r in replies if r.startswith("Queued"))
        jobs = app.ctx.registry.jobs("train")
        assert len(jobs) == 2 and [j.state.value for j in jobs].count("queued") == 1
        # a third tab's poll: the job it shows, and the rest of the queue after it
        from jobs.view import view_of
        from ui.train_tab import current_job, queue_note, status_markdown

        shown = current_job(app.ctx)
        third = status_markdown(view_of(shown.events(), shown.title)) + queue_note(app.ctx, shown)
        assert all(j.title in third for j in jobs), third
        assert "Also in the queue" in third
        for j in jobs:
            j.request_stop()
