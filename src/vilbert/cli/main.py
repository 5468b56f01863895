"""The `vilbert` command: one entry point, one module per subcommand.

Each subcommand lives in `vilbert.cli.<name>` and exposes `main(argv=None) -> int`, so it can be
called from Python and tested without a subprocess. Modules are imported lazily: `vilbert --help`
stays fast and a subcommand's heavy imports are paid only when it runs.
"""

from __future__ import annotations

import importlib
import sys

from vilbert import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("vilbert.cli.demo", "the paper's experiment end to end on the generated world"),
    "world": ("vilbert.cli.world", "generate the synthetic world in the real datasets' formats"),
    "features": ("vilbert.cli.features", "extract region features from images into a feature store"),
    "pretrain": ("vilbert.cli.pretrain", "pretrain on image-caption pairs (masked modelling + alignment)"),
    "finetune": ("vilbert.cli.finetune", "fine-tune on a downstream task"),
    "evaluate": ("vilbert.cli.evaluate", "evaluate a checkpoint on a task split"),
    "index": ("vilbert.cli.index", "embed every image of a feature store for fast text search"),
    "search": ("vilbert.cli.search", "the best images of an index for a text (ViLBERT can re-rank them)"),
    "predict": ("vilbert.cli.predict", "answer a question or ground an expression on one image"),
    "explain": ("vilbert.cli.explain", "draw the co-attention between words and regions"),
    "serve": ("vilbert.cli.serve", "a local web page: ask a model about your images"),
    "convert": ("vilbert.cli.convert", "convert an original ViLBERT checkpoint to our format"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vilbert <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `vilbert <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vilbert: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
