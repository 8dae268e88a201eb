"""`python app.py [serve]`: start the web UI on 127.0.0.1:7860."""

from __future__ import annotations

import argparse

from cli.common import data_dir


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the web UI (the default)")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="data folder (default ./data)")
    p.add_argument("--model", default=None, help="base model to preselect (tiny, a folder, a file or a hub id)")
    p.add_argument("--listen", action="store_true", help="bind to all interfaces (needs --auth or --insecure)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="password-protect the UI")
    p.add_argument("--insecure", action="store_true", help="allow --listen without --auth (prints a warning)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ui.app import launch, launch_settings

    launch_settings(args.port, args.listen, args.auth, args.insecure)  # bad flags fail before any import
    launch(data_dir(args), port=args.port, model=args.model, listen=args.listen, auth=args.auth,
           insecure=args.insecure, block=True)
    return 0
