"""Why does the demo's VQA stay near its answer prior? Accuracy per question family of the world
(existence, counting, colour, shape, relation), each against its own prior, for VQA fine-tunes of
the demo's pretrained ViLBERT that differ in one thing at a time:

    steps   the demo's recipe (80 steps of 32) against N times as many steps
    boxes   the world's proposals (true boxes, jittered copies of them, background boxes) against
            the true object boxes alone (a feature store extracted from them)
    colour  the demo's features against features with the 40 colour dims (`--colour-features`;
            a pretraining of its own, with the demo's settings, since the feature width changes)
    colour only  the train split's colour questions alone (`--colour-only`): can the model learn
            colour from these features at all, when nothing else competes for the steps?

If a family rises with steps, the demo's budget holds it back; if it rises only with the true boxes,
the proposals (duplicates of one object under several boxes) hold it back; if it rises only with
the colour dims, the features do.

The last column scores each fine-tune on the same questions asked of the next test image's
regions: at the floor, the model reads the image; above it, the text alone answers.

`--probes` adds where colour is lost: linear probes (trained on the train split's attribute
questions, scored on the test split's) for the asked object's colour and shape, read from its
input region features, from the model's visual output at that region, from the text [CLS] output
and from the fused vector the VQA head sees; for the pretrained model and every fine-tune.

    python scripts/vqa_by_family.py --demo runs/demo --out runs/vqa_by_family [--steps 80 320] [--true-boxes] [--colour] [--colour-only] [--probes]

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

import numpy as np
import torch

from vilbert.demo.rows import MAIN_ROWS
from vilbert.demo.sizes import default_sizes
from vilbert.demo.steps import EXTRACT_BATCH, Steps, link_demo_parts
from vilbert.features.boxes import box_iou
from vilbert.features.extract import ExtractConfig
from vilbert.io.atomic import write_json
from vilbert.model import load_pretrained
from vilbert.pipelines import FeaturesRun, extract
from vilbert.tasks.builder import build_task
from vilbert.tasks.vqa import vqa_accuracy
from vilbert.world.scene import Scene, WorldObject, resolve

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


def colour_only_world(demo: Path, out: Path) -> None:
    """OUT/world: DEMO's world, but VQA's train split holds only its colour questions."""
    if (out / "world").exists():
        return
    vqa = out / "world" / "vqa"
    vqa.mkdir(parents=True)
    for item in (demo / "world").iterdir():
        if item.name != "vqa":
            (out / "world" / item.name).symlink_to(item.resolve())
    colour = {qid for qid, family in families(demo / "world").items() if family == "colour"}
    for item in (demo / "world" / "vqa").iterdir():
        if "_train_" not in item.name:
            (vqa / item.name).symlink_to(item.resolve())
            continue
        data = json.loads(item.read_text())
        key = "questions" if "questions" in data else "annotations"
        data[key] = [q for q in data[key] if int(q["question_id"]) in colour]
        write_json(vqa / item.name, data)


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
    # The same questions on the next test image's regions: a model that reads the image falls to
    # the floor there, one that answers from the question's text keeps its score.
    images = sorted({e.image_id for e in examples})
    following = dict(zip(images, images[1:] + images[:1]))
    elsewhere = [replace(e, image_id=following[e.image_id]) for e in examples]
    with torch.no_grad():
        predicted = task.predict(model, examples)
        predicted_elsewhere = task.predict(model, elsewhere)
    out = {"all": vqa_accuracy(predicted, [e.scores for e in examples]),
           "another image": vqa_accuracy(predicted_elsewhere, [e.scores for e in examples])}
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
    out["another image"] = out["all"]  # the prior does not look at the image
    out["questions"] = {f: sum(family_of[e.question_id] == f for e in test) for f in FAMILIES}
    return out


# -- probes -------------------------------------------------------------------------------------

PROBE_POINTS = ("input region", "visual output at the region", "text [CLS] output", "fused (the VQA head's input)")


def _scenes(world: Path) -> tuple[dict[int, Scene], dict[int, dict]]:
    scenes, programs = {}, {}
    with (world / "scenes.jsonl").open() as f:
        for line in f:
            record = json.loads(line)
            s = record["scene"]
            scenes[int(record["image_id"])] = Scene(s["image_id"], s["width"], s["height"],
                                                    [WorldObject(**o) for o in s["objects"]])
            programs.update({int(q["question_id"]): q["program"] for q in record["questions"]})
    return scenes, programs


def _asked_objects(task, split: str, attr: str, scenes, programs) -> list[tuple]:
    """(example, object) for the attribute questions of `split` asking `attr` of one named object."""
    out = []
    for e in task.examples(split):
        program = programs[e.question_id]
        if program["op"] == "query" and program["attr"] == attr and set(program["object"]) == {"filter"}:
            scene = scenes[int(e.image_id)]
            found = resolve(scene, program["object"])
            if len(found) == 1:
                out.append((e, scene, scene.objects[found[0]]))
    return out


def _best_region(locations: torch.Tensor, scene: Scene, box: list[float]) -> int:
    """The row of `locations` ([R,5] normalised x1 y1 x2 y2 area) that overlaps `box` most."""
    scale = np.array([scene.width, scene.height, scene.width, scene.height], dtype=np.float64)
    return int(box_iou(locations[:, :4].double().numpy(), (np.array(box) / scale)[None])[:, 0].argmax())


def _probe_inputs(model, task, rows, attr: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    points: dict[str, list[torch.Tensor]] = {k: [] for k in PROBE_POINTS}
    labels = []
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        batch = task.collate([e for e, _, _ in chunk])
        with torch.no_grad():
            out = model(**batch.model_inputs())
        for k, (_, scene, obj) in enumerate(chunk):
            j = _best_region(batch.image_locations[k], scene, obj.box)
            for name, value in zip(PROBE_POINTS, (batch.image_features[k, j], out.image_sequence[k, j],
                                                  out.text_sequence[k, 0], out.fused[k])):
                points[name].append(value)
            labels.append(getattr(obj, attr))
    return {k: torch.stack(v) for k, v in points.items()}, labels


def _linear_probe(x_train, y_train, x_test, y_test) -> float:
    """Test accuracy of a logistic regression (standardised inputs, full-batch Adam, fixed seed)."""
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    target = torch.tensor([index[c] for c in y_train])
    generator = torch.Generator().manual_seed(0)
    probe = torch.nn.Linear(x_train.shape[1], len(classes))
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=generator) * 0.01)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x_train), target).backward()
        opt.step()
    with torch.no_grad():
        predicted = probe(x_test).argmax(-1).tolist()
    return sum(classes[p] == y for p, y in zip(predicted, y_test)) / len(y_test)


def probes(steps: Steps, model_dir: Path, world: Path) -> dict[str, dict[str, float]]:
    """attr -> probe point -> test accuracy of a linear probe for the asked object's attr, on the
    questions of `world` (the demo's, the same for every arm) and the features of `steps`."""
    task = build_task("vqa", world, steps.features, **steps.task_options("vqa"))
    scenes, programs = _scenes(world)
    model = load_pretrained(model_dir).eval()
    out = {}
    for attr in ("colour", "shape"):
        train = _asked_objects(task, "train", attr, scenes, programs)
        test = _asked_objects(task, steps.sizes.eval_split, attr, scenes, programs)
        (x_train, y_train), (x_test, y_test) = (_probe_inputs(model, task, rows, attr) for rows in (train, test))
        out[attr] = {k: _linear_probe(x_train[k], y_train, x_test[k], y_test) for k in PROBE_POINTS}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, nargs="+", default=[80, 320], help="VQA fine-tuning steps to compare")
    p.add_argument("--true-boxes", action="store_true", help="also fine-tune on features of the true boxes alone")
    p.add_argument("--colour", action="store_true", help="also pretrain and fine-tune on features with colour dims")
    p.add_argument("--colour-only", action="store_true", help="also fine-tune on the train split's colour questions alone")
    p.add_argument("--probes", action="store_true", help="linear probes for the asked object's colour and shape")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    demo, out = Path(args.demo), Path(args.out)
    sizes = default_sizes()
    arms = {"proposals": out / "proposals"}
    if args.true_boxes:
        arms["true boxes"] = out / "true_boxes"
    if args.colour_only:
        arms["colour questions only"] = out / "colour_only"
    for name, folder in arms.items():
        if name == "colour questions only":
            colour_only_world(demo, folder)  # before link, which would point its world at the demo's
        link(demo, folder, features=name in ("proposals", "colour questions only"))
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
    probed: dict[str, dict[str, dict[str, float]]] = {}
    if args.probes:
        probed["pretrained, before fine-tuning"] = probes(Steps(arms["proposals"], sizes),
                                                          arms["proposals"] / "runs/pretrain/vilbert/model",
                                                          demo / "world")
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
                if args.probes and seed == args.seeds[0] and name != "colour features":  # other features
                    model_dir = steps.run_dir(VILBERT, "vqa", seed) / "model"
                    probed[f"{name}, {n} steps"] = probes(steps, model_dir, demo / "world")
                print(f"{name}, {n} steps, seed {seed}: " + "  ".join(f"{k} {100 * v:.1f}" for k, v in scores.items()),
                      flush=True)
    columns = ("all", *FAMILIES, "another image")
    print(f"\nVQA accuracy on the test split by question family (mean over seeds {args.seeds})\n")
    print("| fine-tune | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    print("| answer prior (best train answer per family and question type) | "
          + " | ".join(f"{100 * prior[c]:.1f}" for c in columns) + " |")
    for row, cells in results.items():
        print(f"| {row} | " + " | ".join(f"{statistics.fmean(cells[c]):.1f}" for c in columns) + " |")
    if probed:
        print(f"\nLinear probes for the asked object's colour / shape (test accuracy, %; seed {args.seeds[0]})\n")
        print("| model | " + " | ".join(PROBE_POINTS) + " |")
        print("| --- |" + " ---: |" * len(PROBE_POINTS))
        for row, by_attr in probed.items():
            print(f"| {row} | " + " | ".join(f"{100 * by_attr['colour'][k]:.0f} / {100 * by_attr['shape'][k]:.0f}"
                                             for k in PROBE_POINTS) + " |")
    write_json(out / "vqa_by_family.json", {"prior": prior, "runs": results, "probes": probed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
