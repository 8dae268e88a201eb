"""`python app.py [serve]`: start the web UI."""

from __future__ import annotations

from cli.common import data_dir


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the web UI (the default)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model", default=None, help="base model to preselect")
    p.add_argument("--listen", action="store_true", help="bind to all interfaces (needs --auth or --insecure)")
    p.add_argument("--auth", default=None, help="user:password required when --listen")
    p.add_argument("--insecure", action="store_true", help="allow --listen without --auth")
    p.set_defaults(func=run)


def run(args) -> int:
    from ui.app import launch

    launch(data_dir(args), port=args.port, model=args.model, listen=args.listen, auth=args.auth,
           insecure=args.insecure, block=True)
    return 0
