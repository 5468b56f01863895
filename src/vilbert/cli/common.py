"""What every `vilbert` command shares: the argument groups (one flag name per setting, its
default read from where the setting lives) and the one way errors become exit codes.

Exit codes: 0 done; 1 the job ran and failed (a demo stage, every image of an extraction);
2 the input was refused (a bad flag, file, value or id: the message names it). argparse's own
usage errors are 2 as well.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from typing import Any, Callable

import torch

from vilbert.detect import list_detectors
from vilbert.pipelines.models import TEXT_INIT_HELP, ModelSource
from vilbert.pipelines.settings import multitask_train_config, train_config_for
from vilbert.tasks import TaskData, parse_options
from vilbert.train import TrainConfig

REFUSED, FAILED = 2, 1
# Errors that mean "the input is wrong": each message names the file, id or value.
INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError, pickle.UnpicklingError)
TRAIN_DEFAULTS = TrainConfig()


class JobFailed(RuntimeError):
    """The command ran and failed (exit 1); the message says what failed and where to look."""


def run_command(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None,
                body: Callable[[argparse.Namespace], int | None]) -> int:
    """Parse `argv`, apply --threads, run `body`; errors become a one-line message and an exit code."""
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return int(body(args) or 0)
    except JobFailed as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return FAILED
    except INPUT_ERRORS as err:
        # A KeyError's str() is its repr; its message is the first argument.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog}: error: {message}", file=sys.stderr)
        return REFUSED


# -- argument groups --------------------------------------------------------------------------


def add_runtime_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    g = p.add_argument_group("runtime")
    if device:
        g.add_argument("--device", default="auto", help="auto (CUDA under torchrun/when present, else CPU), cpu, cuda:1, ...")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """A released checkpoint's detector for an image's regions (predict, explain)."""
    g = p.add_argument_group("regions from a released checkpoint's detector")
    g.add_argument("--detector", default=None, help=f"{' or '.join(list_detectors())} (default: the feature store's "
                                                    "extractor, or EfficientNet-Lite0)")
    g.add_argument("--detector-weights", default=None, help="its weights file")
    g.add_argument("--detector-config", default=None, help="a JSON file of detector settings over the released ones")


def add_data_args(p: argparse.ArgumentParser, task: bool = True, tasks: bool = False) -> None:
    """--task, --data, --features, --option and the text/region limits (TaskData's); `tasks`:
    --task or --tasks (several, trained together)."""
    g = p.add_argument_group("data")
    if task:
        which = g.add_mutually_exclusive_group(required=True) if tasks else g
        which.add_argument("--task", required=not tasks, help="task name (vqa, vcr, vcr_q_a, vcr_qa_r, refer, "
                                                              "retrieval, zero_shot_retrieval)")
        if tasks:
            which.add_argument("--tasks", default=None, metavar="TASK,TASK,...",
                               help="several tasks trained together in one model (12-in-1), e.g. vqa,vcr,refer,retrieval")
        g.add_argument("--data", required=True, help="dataset root holding vqa/, vcr/, refcoco+/, flickr30k/")
    g.add_argument("--features", default=None, help="region feature store (default DATA/features.lmdb)")
    g.add_argument("--max-text-length", type=int, default=None, help="tokens per text (default: the task's recipe)")
    g.add_argument("--max-regions", type=int, default=None,
                   help=f"real regions per image; the [IMG] row comes on top (default {TaskData.max_regions})")
    if task:
        g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="task option, repeatable (e.g. min_answer_count=9, eval_images=1000)"
                            + ("; with --tasks, TASK.KEY=VALUE for one task (KEY=VALUE: every task)" if tasks else ""))


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """--option pairs plus the text/region limits, as `build_task` options."""
    options = parse_options(args.option)
    for name in ("max_text_length", "max_regions"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


def add_model_args(p: argparse.ArgumentParser, saved: bool = True) -> None:
    """Where the model comes from: a saved directory (--init) or a template (--preset/--config)."""
    g = p.add_argument_group("model" + (" (one of --init, --preset, --config)" if saved else ""))
    if saved:
        g.add_argument("--init", default=None, help="a saved model directory (e.g. a pretraining run's model/)")
    g.add_argument("--preset", default=None, help="a model preset (tiny, small, demo, base)")
    g.add_argument("--config", default=None, help="a ViLBertConfig JSON file instead of a preset")
    g.add_argument("--single-stream", action="store_true", help="the paper's single-stream baseline (with a template)")
    g.add_argument("--text-init", default="auto", help=TEXT_INIT_HELP + " (default %(default)s)")


def model_source(args: argparse.Namespace, default_preset: str | None = None) -> ModelSource:
    preset = args.preset
    if preset is None and args.config is None and getattr(args, "init", None) is None:
        preset = default_preset
    overrides = {"architecture": "single_stream"} if args.single_stream else {}
    return ModelSource(directory=getattr(args, "init", None), preset=preset, config_file=args.config,
                       overrides=overrides, text_init=args.text_init)


def add_training_args(p: argparse.ArgumentParser, text_lr_scale: float) -> None:
    """The trainer's settings; lr, batch size and epochs default to the task's recipe."""
    d = TRAIN_DEFAULTS
    g = p.add_argument_group("training (lr, batch size and epochs default to the task's recipe)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--max-steps", type=int, default=None, help="run exactly this many steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=None, help="global batch (all processes and accumulation steps)")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--text-lr-scale", type=float, default=text_lr_scale,
                   help="learning-rate multiplier for the text stream (the weights BERT initialises) "
                        "(default %(default)s)")
    g.add_argument("--warmup-fraction", type=float, default=None,
                   help=f"share of the steps with linear warm-up (default {d.warmup_fraction})")
    g.add_argument("--weight-decay", type=float, default=None, help=f"(default {d.weight_decay})")
    g.add_argument("--grad-accum", type=int, default=None, help=f"accumulation micro-steps (default {d.grad_accum})")
    g.add_argument("--data-fraction", type=float, default=None,
                   help="train on this fixed, nested share of the examples (default all)")
    g.add_argument("--bucket-by-length", action="store_true",
                   help="batch examples of like text length together (less padding; another example order)")
    g.add_argument("--seed", type=int, default=None, help=f"(default {d.seed})")
    g.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help=f"(default {d.precision}: bf16/fp16 autocast on CUDA, fp32 elsewhere)")
    g.add_argument("--eval-every", type=int, default=None, help="evaluate val every N steps (default: at the end)")
    g.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default: at the end)")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps; --resume continues the run")
    g.add_argument("--workers", type=int, default=None, help=f"data loader workers (default {d.num_workers})")
    g.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")


def train_config(args: argparse.Namespace, task: str | list[str]) -> TrainConfig:
    """TrainConfig from the training arguments over `task`'s recipe (several tasks: their
    combined defaults, `multitask_train_config`; --batch-size is then each task's, not the config's)."""
    several = not isinstance(task, str)
    make = multitask_train_config if several else train_config_for
    return make(
        task, epochs=args.epochs, max_steps=args.max_steps, batch_size=None if several else args.batch_size, lr=args.lr,
        warmup_fraction=args.warmup_fraction, weight_decay=args.weight_decay, grad_accum=args.grad_accum,
        data_fraction=args.data_fraction, seed=args.seed, precision=args.precision, device=args.device,
        eval_every=args.eval_every, save_every=args.save_every, stop_after=args.stop_after,
        num_workers=args.workers, progress=not args.no_progress, bucket_by_length=args.bucket_by_length or None,
    )
