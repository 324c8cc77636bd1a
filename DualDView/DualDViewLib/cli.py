"""``duald-view``: the DualD QA viewer in a browser (trame-slicer over the desktop module's logic).

    duald-view [SOURCE [SEGMENTATION [REFERENCE]]] [--port 8080] [--host 127.0.0.1 --allow-remote]
               [--model BUNDLE] [--device auto] [--synthetic PATH [--heatmap PATH]] [--open]

--synthetic/--heatmap show an earlier run's outputs (e.g. demo-output/) over SOURCE without synthesizing.

It has no authentication: it serves on loopback only, and any other host needs --allow-remote.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from DualDSynthesisLib.core.console import safe_console

PROG = "duald-view"
EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, metavar="FILES",
                   help="source volume, then optionally a segmentation (labels) and a reference (real target)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than loopback; the viewer has NO authentication")
    p.add_argument("--model", type=Path, action="append", help="model bundle(s) offered first in the page")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--synthetic", type=Path, help="show this earlier synthetic volume over SOURCE")
    p.add_argument("--heatmap", type=Path, help="and this earlier heatmap (needs --synthetic)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_args(args: argparse.Namespace) -> str | None:
    """The one-sentence reason the arguments are refused, or None."""
    if not is_loopback(args.host) and not args.allow_remote:
        return (f"--host {args.host} is not a loopback address and the viewer has no authentication; "
                "add --allow-remote if every machine that can reach it may see and write your data")
    if len(args.files) > 3:
        return "give at most three files: source, segmentation, reference"
    if (args.synthetic or args.heatmap) and not args.files:
        return "--synthetic and --heatmap are shown over a source volume; give the SOURCE file too"
    if args.heatmap and not args.synthetic:
        return "--heatmap needs --synthetic"
    extra = [p for p in (args.synthetic, args.heatmap) if p is not None]
    for path in [*args.files, *(args.model or []), *extra]:
        if not path.exists():
            return f"{path} does not exist"
    return None


def main(argv: list[str] | None = None) -> int:
    safe_console()
    args = _parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from .app import DualDViewer  # imports trame and slicer: only once the arguments are fine

    viewer = DualDViewer(models=args.model, device=args.device)
    for kind, path in zip(("source", "segmentation", "reference"), args.files, strict=False):
        if not viewer.load(kind, path.resolve()):
            print(f"{PROG}: error: {viewer.state.error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.synthetic and not viewer.show_result(args.synthetic.resolve(), args.heatmap and args.heatmap.resolve()):
        print(f"{PROG}: error: {viewer.state.error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{PROG}: serving on http://{args.host}:{args.port}/ (no authentication)", flush=True)
    viewer.server.start(host=args.host, port=args.port, open_browser=args.open, show_connection_info=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
