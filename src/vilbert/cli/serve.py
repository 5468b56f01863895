"""`vilbert serve`: a local web page over a saved model: upload an image, ask a question or type an
expression, see the answers, the chosen box and the co-attention over the image.

    vilbert serve --checkpoint RUN/model --features STORE [--port 8000]

Regions are made as for `vilbert predict` (the store's extractor, or `--detector`). Needs the
extra vilbert[serve] (Flask). Serves on 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from vilbert.cli.common import add_detector_args, add_runtime_args, run_command
from vilbert.inference import Predictor
from vilbert.web.app import create_app

PROG = "vilbert serve"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a saved model directory (a VQA and/or referring head)")
    p.add_argument("--features", default=None, help="a feature store whose extractor and settings to reuse")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    add_detector_args(p)
    add_runtime_args(p)
    return p


def run(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("flask") is None:
        raise ImportError("vilbert serve needs the extra vilbert[serve]: pip install 'vilbert[serve]'")
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, features=args.features,
                                          detector=args.detector, detector_weights=args.detector_weights,
                                          detector_config=args.detector_config)
    app = create_app(predictor)
    print(f"{PROG}: http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    app.run(host=args.host, port=args.port)


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
