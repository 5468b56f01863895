"""`vilbert convert`: an original ViLBERT checkpoint + its config.json -> our model directory."""

from __future__ import annotations

import argparse
import sys

from vilbert.cli.common import run_command
from vilbert.model.convert import convert_original
from vilbert.model.pretrained import save_pretrained

PROG = "vilbert convert"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a checkpoint of the original ViLBERT code (vilbert-multi-task or vilbert_beta, "
        "with or without a DataParallel `module.` prefix) into a directory with config.json + model.safetensors.",
    )
    parser.add_argument("checkpoint", help="original checkpoint (torch.save of a state dict), e.g. pytorch_model_9.bin")
    parser.add_argument("--config", required=True, help="the original config.json (e.g. bert_base_6layer_6conect.json)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--answers", default=None,
                        help="the VQA head's answer list: the original's trainval_label2ans.pkl (read through an "
                             "allow-list unpickler) or a JSON list; stored in config.json so predict names answers")
    return parser


def run(args: argparse.Namespace) -> None:
    model, report = convert_original(args.checkpoint, args.config, args.answers)
    save_pretrained(model, args.out)
    print(f"{report.summary()}; heads: {', '.join(model.config.heads) or '(none)'}")
    if "vqa" in model.config.heads and not model.config.heads["vqa"].get("answers"):
        print("  the VQA head has no answer list: add --answers trainval_label2ans.pkl to name its outputs")
    for key in report.ignored:
        print(f"  ignored (unused by the model): {key}")
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
