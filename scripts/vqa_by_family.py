"""Why does the demo's VQA stay near its answer prior? Accuracy per question family of the world
(existence, counting, colour, shape, relation), each against its own prior, for VQA fine-tunes of
the demo's pretrained ViLBERT that differ in one thing at a time:

    steps   the demo's recipe (80 steps of 32) against N times as many steps
    boxes   the world's proposals (true boxes, jittered copies of them, background boxes) against
            the true object boxes alone (a feature store extracted from them)
    colour  the demo's features against features with the 40 colour dims (`--colour-features`;
            a pretraining of its own, with the demo's settings, since the feature width changes)

If a family rises with steps, the demo's budget holds it back; if it rises only with the true boxes,
the proposals (duplicates of one object under several boxes) hold it back; if it rises only with
the colour dims, the features do.

    python scripts/vqa_by_family.py --demo runs/demo --out runs/vqa_by_family [--steps 80 320] [--true-boxes] [--colour]

`--demo` is a finished `vilbert demo` folder (read only; OUT links to its world, features and
pretrained model). Runs are kept under OUT and reused when rerun.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from vilbert.demo.rows import MAIN_ROWS
from vilbert.demo.sizes import default_sizes
from vilbert.demo.steps import EXTRACT_BATCH, Steps, link_demo_parts
from vilbert.features.extract import ExtractConfig
from vilbert.io.atomic import write_json
from vilbert.model import load_pretrained
from vilbert.pipelines import FeaturesRun, extract
from vilbert.tasks.builder import build_task
from vilbert.tasks.vqa import vqa_accuracy

VILBERT = next(r for r in MAIN_ROWS if r.key == "vilbert")
FAMILIES = ("existence", "counting", "colour", "shape", "relation")


def families(world: Path) -> dict[int, str]:
    """question id -> family (the attribute family split by the attribute asked)."""
    out = {}
    with (world / "scenes.jsonl").open() as f:
        for line in f:
            for q in json.loads(line)["questions"]:
                family = q["family"]
                out[int(q["question_id"])] = q["program"]["attr"] if family == "attribute" else family
    return out


def link(demo: Path, out: Path, features: bool) -> None:
    link_demo_parts(demo, out, ["world", "runs/pretrain/vilbert"] + (["features.lmdb"] if features else []))


def true_boxes_file(world: Path, path: Path) -> Path:
    """A COCO-style boxes file holding each image's true object boxes only."""
    annotations, images = [], []
    with (world / "scenes.jsonl").open() as f:
        for line in f:
            record = json.loads(line)
            scene = record["scene"]
            images.append({"id": record["image_id"], "file_name": f"{record['image_id']}.png",
                           "width": scene["width"], "height": scene["height"]})
            for k, o in enumerate(record["scene"]["objects"]):
                x1, y1, x2, y2 = o["box"]
                annotations.append({"id": record["image_id"] * 100 + k, "image_id": record["image_id"],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0, "category_id": 1})
    write_json(path, {"info": {"description": "true object boxes"}, "categories": [{"id": 1, "name": "region"}],
                      "images": images, "annotations": annotations})
    return path


def by_family(steps: Steps, model_dir: Path, family_of: dict[int, str]) -> dict[str, float]:
    task = build_task("vqa", steps.world, steps.features, **steps.task_options("vqa"))
    model = load_pretrained(model_dir).eval()
    split = steps.sizes.eval_split
    examples = task.examples(split)
    with torch.no_grad():
        predicted = task.predict(model, examples)
    out = {"all": vqa_accuracy(predicted, [e.scores for e in examples])}
    for family in FAMILIES:
        rows = [(p, e.scores) for p, e in zip(predicted, examples) if family_of[e.question_id] == family]
        out[family] = vqa_accuracy([p for p, _ in rows], [s for _, s in rows])
    return out


def priors(steps: Steps, family_of: dict[int, str]) -> dict[str, float]:
    """Per family: the best train answer per question type, scored on the evaluation split."""
    task = build_task("vqa", steps.world, steps.features, **steps.task_options("vqa"))
    train, test = task.examples("train"), task.examples(steps.sizes.eval_split)
    totals: dict[str | None, Counter[str]] = {}
    for e in train:
        totals.setdefault((family_of[e.question_id], e.question_type), Counter()).update(e.scores)
    best = {k: min(c.items(), key=lambda item: (-item[1], item[0]))[0] for k, c in totals.items()}
    out = {"all": vqa_accuracy([best.get((family_of[e.question_id], e.question_type), "") for e in test],
                               [e.scores for e in test])}
    for family in FAMILIES:
        rows = [e for e in test if family_of[e.question_id] == family]
        out[family] = vqa_accuracy([best.get((family, e.question_type), "") for e in rows], [e.scores for e in rows])
    out["questions"] = {f: sum(family_of[e.question_id] == f for e in test) for f in FAMILIES}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, nargs="+", default=[80, 320], help="VQA fine-tuning steps to compare")
    p.add_argument("--true-boxes", action="store_true", help="also fine-tune on features of the true boxes alone")
    p.add_argument("--colour", action="store_true", help="also pretrain and fine-tune on features with colour dims")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    demo, out = Path(args.demo), Path(args.out)
    sizes = default_sizes()
    arms = {"proposals": out / "proposals"}
    if args.true_boxes:
        arms["true boxes"] = out / "true_boxes"
    for name, folder in arms.items():
        link(demo, folder, features=name == "proposals")
    if args.colour:  # its own features and pretraining (the model's input width changes)
        arms["colour features"] = out / "colour"
        colour = Steps(arms["colour features"], replace(sizes, colour_features=True))
        link_demo_parts(demo, colour.out, ["world"])
        colour.extract_features()  # skips the images it holds
        if not (colour.pretrain_dir(VILBERT.model) / "model").is_dir():
            colour.pretrain(VILBERT.model)
    family_of = families(demo / "world")
    if args.true_boxes and not (arms["true boxes"] / "features.lmdb").exists():
        folder = arms["true boxes"]
        report = extract(FeaturesRun(images=demo / "world" / "images", out=folder / "features.lmdb",
                                     boxes=true_boxes_file(demo / "world", folder / "true_boxes.json"),
                                     config=ExtractConfig(image_size=sizes.image_size, batch_size=EXTRACT_BATCH,
                                                          colour_features=sizes.colour_features)))
        print(f"true-box features: {report.written} images written", flush=True)
    prior = priors(Steps(arms["proposals"], sizes), family_of)
    print("questions on the test split per family:", prior.pop("questions"))
    results: dict[str, dict[str, list[float]]] = {}
    for name, folder in arms.items():
        for n in args.steps:
            ft = replace(sizes.finetune["vqa"], steps=n)
            steps = Steps(folder / f"steps{n}", replace(sizes, finetune={**sizes.finetune, "vqa": ft}))
            link(folder, steps.out, features=True)
            for seed in args.seeds:
                done = steps.run_dir(VILBERT, "vqa", seed) / "metrics.json"
                if not (done.is_file() and json.loads(done.read_text()).get("finished")):
                    steps.finetune(VILBERT, "vqa", seed)
                scores = by_family(steps, steps.run_dir(VILBERT, "vqa", seed) / "model", family_of)
                for family, value in scores.items():
                    results.setdefault(f"{name}, {n} steps", {}).setdefault(family, []).append(100 * value)
                print(f"{name}, {n} steps, seed {seed}: " + "  ".join(f"{k} {100 * v:.1f}" for k, v in scores.items()),
                      flush=True)
    columns = ("all", *FAMILIES)
    print(f"\nVQA accuracy on the test split by question family (mean over seeds {args.seeds})\n")
    print("| fine-tune | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    print("| answer prior (best train answer per family and question type) | "
          + " | ".join(f"{100 * prior[c]:.1f}" for c in columns) + " |")
    for row, cells in results.items():
        print(f"| {row} | " + " | ".join(f"{statistics.fmean(cells[c]):.1f}" for c in columns) + " |")
    write_json(out / "vqa_by_family.json", {"prior": prior, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
