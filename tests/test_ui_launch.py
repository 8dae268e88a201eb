"""Launch settings and the served app's security boundary, checked against a running server."""

import urllib.error
import urllib.request

import pytest

from tests.ui_fixtures import running_app
from ui.app import launch_settings


def test_listen_requires_auth_or_insecure():
    assert launch_settings().server_name == "127.0.0.1"
    with pytest.raises(ValueError, match="--auth"):
        launch_settings(listen=True)
    s = launch_settings(listen=True, insecure=True)
    assert s.server_name == "0.0.0.0" and "WITHOUT a password" in s.warning
    s = launch_settings(listen=True, auth="ann:pw:with:colons")
    assert s.auth == ("ann", "pw:with:colons") and s.warning is None
    with pytest.raises(ValueError, match="user:password"):
        launch_settings(auth="nopassword")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_served_files_and_private_pages(data, tmp_path):
    inside = data.root / "embeddings" / "note.txt"
    inside.write_text("hello")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    with running_app(data) as app:
        assert app.url.startswith("http://127.0.0.1:")
        assert _status(app.url + "/") == 200
        assert _status(f"{app.url}/gradio_api/file={inside}") == 200
        assert _status(f"{app.url}/gradio_api/file={outside}") == 403
        assert _status(f"{app.url}/monitoring") in (403, 404)  # enabled, it answers 200
        assert _status(f"{app.url}/gradio_api/runs") == 404  # run history off
        # the create plan is computed live, before anything is written
        plan = app.client().predict("tiny", "mycat", "cat toy", 2, "text", api_name="/create_plan")
        assert "2 token(s)" in plan and "2 of 75" in plan
        bad = app.client().predict("tiny", "bad/name", "cat", 1, "text", api_name="/create_plan")
        assert "Cannot create" in bad and "characters" in bad
        assert not list(data.embeddings.iterdir())[1:]  # only note.txt: nothing was created


def test_auth_is_enforced(data):
    from gradio_client import Client

    with running_app(data, auth="ann:s3cret") as app:
        assert _status(app.url + "/config") == 401
        with pytest.raises(Exception, match="(?i)credentials|auth"):
            Client(app.url, verbose=False)
        assert app.client(auth=("ann", "s3cret")).view_api(print_info=False, return_format="dict")
