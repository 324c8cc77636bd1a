"""``duald-view``: the DualD QA viewer in a browser (trame-slicer over the desktop module's logic).

    duald-view [SOURCE [SEGMENTATION [REFERENCE]]] [--input CONTRAST=PATH ...] [--port 8080]
               [--host 127.0.0.1 --allow-remote] [--model BUNDLE] [--models DIR] [--device auto]
               [--synthetic PATH [--heatmap PATH]] [--open] [--idle-exit 300]

--input CONTRAST=PATH: one more input of SOURCE's subject for a multi-input model (as duald-synthesize's; the
page has a row per input the chosen model declares); without --model, the bundled model that reads SOURCE and
the given inputs is offered first (``model_choice.choose_model``), and a note says which.

--synthetic/--heatmap show an earlier run's outputs (e.g. demo-output/) over SOURCE without synthesizing.

It stops by itself --idle-exit seconds after the last browser tab closed (or after the start if none
opened), saying so; --idle-exit 0 keeps it running until Ctrl+C.

It has no authentication: it serves on loopback only, and any other host needs --allow-remote.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from DualDSynthesisLib.cli.input_plan import parse_input_options
from DualDSynthesisLib.core.console import safe_console
from DualDSynthesisLib.core.errors import DualDError

from .ports import BIND_ERRNOS, bind_problem, port_number, usable_port

PROG = "duald-view"
EXIT_BAD_INPUT = 2
DEFAULT_IDLE_EXIT_S = 300  # what trame's own auto-shutdown used; now announced and adjustable


def _seconds(text: str) -> int:
    """argparse type for --idle-exit: whole seconds, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more; 0: never stop)")
    return value


def idle_note(seconds: int) -> str:
    """How the viewer ends, for the "serving on" line."""
    if seconds == 0:
        return "it runs until Ctrl+C"
    return f"it stops {seconds} s after the last tab closes; --idle-exit 0 keeps it running"


def idle_exit_message(seconds: int) -> str:
    return (f"{PROG}: no browser tab has been open for {seconds} s, so the viewer stops; "
            f"start it with --idle-exit 0 to keep it running, or a longer --idle-exit SECONDS")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, metavar="FILES",
                   help="source volume, then optionally a segmentation (labels) and a reference (real target)")
    p.add_argument("--port", type=port_number, default=8080, help="port 0-65535 (default 8080; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than loopback; the viewer has NO authentication")
    p.add_argument("--input", dest="inputs", action="append", metavar="CONTRAST=PATH",
                   help="one more input of SOURCE's subject for a multi-input model (repeatable), e.g. flair=F.nii.gz")
    p.add_argument("--model", type=Path, action="append", help="model bundle(s) offered first in the page")
    p.add_argument("--models", type=Path, metavar="DIR",
                   help="a folder of your own (e.g. fine-tuned) bundles, added to the model choice")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--synthetic", type=Path, help="show this earlier synthetic volume over SOURCE")
    p.add_argument("--heatmap", type=Path, help="and this earlier heatmap (needs --synthetic)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--idle-exit", type=_seconds, default=DEFAULT_IDLE_EXIT_S, metavar="SECONDS",
                   help=f"stop this many seconds after the last browser tab closed, or after the start if none "
                        f"opened (default {DEFAULT_IDLE_EXIT_S}; 0: never)")
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
    if args.inputs and not args.files:
        return "--input gives more inputs of SOURCE's subject; give the SOURCE file too"
    try:
        args.named_inputs = parse_input_options(args.inputs)  # contrast → path, the CLI's checks and sentences
    except DualDError as exc:
        return str(exc)
    if args.models is not None and not args.models.is_dir():
        return f"the models folder {args.models} does not exist or is not a folder"
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
    port, problem = usable_port(args.host, args.port)  # before anything slow, and before "serving on"
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.named_inputs and not args.model:
        from DualDSynthesisLib.imaging.model_choice import choose_model

        try:  # SOURCE is the reference input of whichever model
            choice = choose_model(args.named_inputs, unnamed_reference=True)
        except DualDError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"{PROG}: note: {choice.note}", file=sys.stderr)
        args.model = [choice.path]
    from .app import DualDViewer  # imports trame and slicer: only once the arguments are fine

    viewer = DualDViewer(models=args.model, device=args.device, models_folder=args.models)
    for skipped in viewer.skipped_models:
        print(f"{PROG}: note: not offered: {skipped}", file=sys.stderr)
    for kind, path in zip(("source", "segmentation", "reference"), args.files, strict=False):
        if not viewer.load(kind, path.resolve()):
            print(f"{PROG}: error: {viewer.state.error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    for contrast, path in args.named_inputs.items():
        if not viewer.load_other(contrast, path.resolve()):
            print(f"{PROG}: error: {viewer.state.error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.synthetic and not viewer.show_result(args.synthetic.resolve(), args.heatmap and args.heatmap.resolve()):
        print(f"{PROG}: error: {viewer.state.error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    viewer.exit_when_idle(args.idle_exit, lambda: print(idle_exit_message(args.idle_exit), flush=True))
    print(f"{PROG}: serving on http://{args.host}:{port}/ (no authentication; {idle_note(args.idle_exit)})",
          flush=True)
    try:  # timeout=0: trame's silent auto-shutdown is replaced by exit_when_idle
        viewer.server.start(host=args.host, port=port, open_browser=args.open, show_connection_info=True, timeout=0)
    except OSError as error:
        if error.errno not in BIND_ERRNOS:
            raise
        # The port was taken between the check and now.
        print(f"{PROG}: error: {bind_problem(args.host, port, error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
