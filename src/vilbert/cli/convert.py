"""`vilbert convert`: an original ViLBERT checkpoint + its config.json -> our model directory."""

from __future__ import annotations

import argparse
import sys

from vilbert.model.convert import ConversionError, convert_original
from vilbert.model.pretrained import save_pretrained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vilbert convert",
        description="Convert a checkpoint of the original ViLBERT code (vilbert-multi-task or vilbert_beta, "
        "with or without a DataParallel `module.` prefix) into a directory with config.json + model.safetensors.",
    )
    parser.add_argument("checkpoint", help="original checkpoint (torch.save of a state dict), e.g. pytorch_model_9.bin")
    parser.add_argument("--config", required=True, help="the original config.json (e.g. bert_base_6layer_6conect.json)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        model, report = convert_original(args.checkpoint, args.config)
    except (ConversionError, FileNotFoundError, ValueError) as err:
        print(f"vilbert convert: {err}", file=sys.stderr)
        return 1
    save_pretrained(model, args.out)
    print(f"{report.summary()}; heads: {', '.join(model.config.heads) or '(none)'}")
    for key in report.ignored:
        print(f"  ignored (unused by the model): {key}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
