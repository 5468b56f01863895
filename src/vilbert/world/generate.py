"""`generate_world`: images and annotations of the generated world, in the real datasets' formats.

Layout (docs/ARCHITECTURE.md "Generated world"): world.json, images/<id>.png, proposals.json,
captions/<split>.tsv, vqa/, refcoco+/, flickr30k/, vcr/, and scenes.jsonl (the ground truth:
scenes and the programs behind every question and expression, for tests and analysis).

Each image is made from its own generators seeded by (seed, image_id, stream), so a parallel run
writes the same bytes as a serial one, and a resumed run skips images already on disk without
changing anything else. Every file is written atomically; world.json comes last and marks a
finished world.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
from tqdm import tqdm

from vilbert.io.atomic import atomic_path, read_json, remove_stale_temps, write_json
from vilbert.world.language import captions, program_text, referring_program, tokenize
from vilbert.world.proposals import MAX_PROPOSALS, MIN_PROPOSALS, proposals
from vilbert.world.questions import annotator_answers, vcr_items, vqa_questions
from vilbert.world.render import encode_png, render_scene
from vilbert.world.scene import COLOURS, RELATIONS, SHAPES, SIZES, Scene, sample_scene

SPLITS: tuple[str, ...] = ("train", "val", "test")
FORMAT_VERSION = 3  # 2: VCR rationales share one template (need the image); 3: VQA annotators agree
# as people do, own random stream; several VCR items per image (vcr_per_image)
# Streams of randomness per image: resuming skips rendering without shifting the others.
# Independent random streams per image, so that changing one kind of annotation leaves the others.
_SCENE, _RENDER, _PROPOSALS, _LANGUAGE, _ANNOTATORS = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the bytes of a world."""

    num_images: int = 2000
    seed: int = 0
    image_size: int = 224
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    captions_per_image: int = 3  # Conceptual-Captions-style pairs per image
    retrieval_captions: int = 5  # Flickr30k has 5 per image
    questions_per_family: int = 2
    refs_per_image: int = 3
    sentences_per_ref: int = 2
    vcr_per_image: int = 1  # VCR items (distinct anchor and relation) per image, as the scene allows
    # Difficulty knobs (the demo makes the world easier for a small model trained for minutes).
    min_objects: int = 2
    max_objects: int = 6
    max_proposals: int = 36  # proposals per image: true boxes, jittered copies, background boxes
    # Test images beyond the fractions' split (ids num_images+1..): a larger test split that leaves
    # train and val (and so every trained model) exactly as they are; evaluation noise shrinks with it.
    extra_test_images: int = 0

    def check(self) -> None:
        if self.num_images < 3:
            raise ValueError(f"num_images={self.num_images}: need at least 3 (one per split)")
        if self.extra_test_images < 0:
            raise ValueError(f"extra_test_images={self.extra_test_images}: expected 0 or more")
        if not 64 <= self.image_size <= 1024:
            raise ValueError(f"image_size={self.image_size}: expected 64..1024 pixels")
        # Ids are built as image_id * 10 + ref, ref_id * 10 + sentence, image_id * 100 + question.
        if not (1 <= self.refs_per_image <= 10 and 1 <= self.sentences_per_ref <= 10
                and 1 <= self.questions_per_family <= 25 and 1 <= self.vcr_per_image <= 10):
            raise ValueError(f"refs_per_image={self.refs_per_image}, sentences_per_ref={self.sentences_per_ref}, "
                             f"questions_per_family={self.questions_per_family}, vcr_per_image={self.vcr_per_image}: "
                             f"expected 1..10, 1..10, 1..25, 1..10")
        if not 2 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(f"min_objects={self.min_objects}, max_objects={self.max_objects}: expected 2 <= min <= max <= 6")
        if not max(MIN_PROPOSALS, 3 * self.max_objects) <= self.max_proposals <= MAX_PROPOSALS:
            raise ValueError(f"max_proposals={self.max_proposals}: expected {max(MIN_PROPOSALS, 3 * self.max_objects)}.."
                             f"{MAX_PROPOSALS} (at least 3 per object)")
        test = 1.0 - self.train_fraction - self.val_fraction
        if min(self.train_fraction, self.val_fraction, test) <= 0:
            raise ValueError(f"split fractions train={self.train_fraction} val={self.val_fraction} "
                             f"leave test={test:.3f}: each split needs a positive share")


def split_ids(config: WorldConfig) -> dict[str, list[int]]:
    """Disjoint, sorted image ids per split (ids 1..num_images shuffled by the seed and split by the
    fractions; the extra test images' ids follow, all in test)."""
    ids = np.random.default_rng([config.seed, 7919]).permutation(config.num_images) + 1
    n_train = max(1, int(round(config.train_fraction * config.num_images)))
    n_val = max(1, int(round(config.val_fraction * config.num_images)))
    n_train = min(n_train, config.num_images - 2)
    extra = np.arange(config.num_images + 1, config.num_images + config.extra_test_images + 1)
    parts = (ids[:n_train], ids[n_train:n_train + n_val], np.concatenate([ids[n_train + n_val:], extra]))
    return {name: sorted(int(i) for i in part) for name, part in zip(SPLITS, parts)}


def _rng(config: WorldConfig, image_id: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, image_id, stream])


def make_scene(config: WorldConfig, image_id: int) -> Scene:
    return sample_scene(_rng(config, image_id, _SCENE), image_id, config.image_size,
                        min_objects=config.min_objects, max_objects=config.max_objects)


def _make_image(job: tuple[WorldConfig, str, int, str]) -> dict[str, Any]:
    """Everything about one image, as compact plain data (the PNG is written here)."""
    config, out_dir, image_id, split = job
    scene = make_scene(config, image_id)
    png = Path(out_dir) / "images" / f"{image_id}.png"
    if not png.exists():
        data = encode_png(render_scene(scene, _rng(config, image_id, _RENDER)))
        with atomic_path(png) as tmp:
            tmp.write_bytes(data)
    rng = _rng(config, image_id, _LANGUAGE)
    record: dict[str, Any] = {"image_id": image_id, "split": split, "scene": scene.to_dict()}
    record["proposals"] = proposals(scene, _rng(config, image_id, _PROPOSALS), config.max_proposals)
    record["captions"] = captions(scene, rng, config.captions_per_image)
    record["retrieval"] = captions(scene, rng, config.retrieval_captions)
    annotators = _rng(config, image_id, _ANNOTATORS)
    record["questions"] = [
        {"question_id": image_id * 100 + k, "family": q.family, "question": q.question, "answer": q.answer,
         "answers": annotator_answers(q.answer, annotators), "question_type": q.question_type,
         "answer_type": q.answer_type, "program": q.program}
        for k, q in enumerate(vqa_questions(scene, rng, config.questions_per_family))
    ]
    record["refs"] = _refs(scene, rng, config)
    record["vcr"] = vcr_items(scene, rng, config.vcr_per_image)
    if record["vcr"]:  # VCR keeps boxes in one metadata file per image
        _write_vcr_metadata(Path(out_dir), scene, record["vcr"][0]["objects"])
    return record


def _write_vcr_metadata(out: Path, scene: Scene, names: list[str]) -> None:
    meta = {"boxes": [o.box + [1.0] for o in scene.objects], "names": names, "width": scene.width,
            "height": scene.height}
    with atomic_path(out / "vcr" / "metadata" / f"{scene.image_id}.json") as tmp:
        tmp.write_text(json.dumps(meta) + "\n")


def _refs(scene: Scene, rng: np.random.Generator, config: WorldConfig) -> list[dict]:
    refs = []
    for index in [int(i) for i in rng.permutation(len(scene.objects))][: config.refs_per_image]:
        program = referring_program(scene, index, rng)
        if program is None:
            continue
        texts: list[str] = []
        for _ in range(config.sentences_per_ref * 3):
            text = program_text(program, rng)
            if text not in texts:
                texts.append(text)
            if len(texts) == config.sentences_per_ref:
                break
        refs.append({"object": index, "program": program, "sentences": texts})
    return refs


# ------------------------------------------------------------------------------------ writers


class _JsonList:
    """A JSON object {head..., key: [items streamed one by one], tail...} written to an open file."""

    def __init__(self, handle: IO[str], head: dict, key: str) -> None:
        self.handle, self.count = handle, 0
        opening = json.dumps(head)[:-1] + ", " if head else "{"
        handle.write(opening + json.dumps(key) + ": [")

    def add(self, item: Any) -> None:
        self.handle.write((", " if self.count else "") + json.dumps(item))
        self.count += 1

    def close(self, tail: dict | None = None) -> None:
        self.handle.write("]" + (", " + json.dumps(tail)[1:] if tail else "}") + "\n")


class _WorldWriter:
    """Writes every annotation file in one pass over the image records (memory stays flat).

    Only what must be whole at the end is kept: image lists and the refs (one pickle).
    """

    def __init__(self, out: Path, config: WorldConfig, stack: contextlib.ExitStack) -> None:
        self.out, self.size = out, config.image_size

        def open_(relative: str) -> IO[str]:
            tmp = stack.enter_context(atomic_path(out / relative))
            return stack.enter_context(open(tmp, "w"))

        self.proposals = _JsonList(open_("proposals.json"), {"info": {"description": "vilbert generated world: "
                                   "region proposals"}, "categories": [{"id": 1, "name": "region"}]}, "annotations")
        self.instances = _JsonList(open_("refcoco+/instances.json"), {"info": {"description": "vilbert generated "
                                   "world, COCO instances"}, "categories": [{"id": k + 1, "name": s, "supercategory":
                                   "shape"} for k, s in enumerate(SHAPES)]}, "annotations")
        self.images: list[dict] = []
        self.refs: list[dict] = []
        self.refs_path = stack.enter_context(atomic_path(out / "refcoco+" / "refs(unc).p"))
        self.lines = {name: {split: open_(f"{name}/{split}.{ext}") for split in SPLITS}
                      for name, ext in (("captions", "tsv"), ("flickr30k", "jsonl"), ("vcr", "jsonl"))}
        self.scenes = open_("scenes.jsonl")
        self.vqa: dict[str, tuple[_JsonList, _JsonList]] = {}
        for split in SPLITS:
            common = {"info": {"description": "vilbert generated world, VQA v2 format"}, "license": {},
                      "data_subtype": split, "data_type": "world"}
            self.vqa[split] = (
                _JsonList(open_(f"vqa/v2_OpenEnded_mscoco_{split}_questions.json"),
                          {**common, "task_type": "Open-Ended"}, "questions"),
                _JsonList(open_(f"vqa/v2_mscoco_{split}_annotations.json"), common, "annotations"))

    def add(self, r: dict) -> None:
        image_id, split = r["image_id"], r["split"]
        self.images.append({"id": image_id, "file_name": f"{image_id}.png", "width": self.size, "height": self.size})
        for k, (x1, y1, x2, y2, score) in enumerate(r["proposals"]):
            self.proposals.add({"id": image_id * 100 + k, "image_id": image_id,
                                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": score,
                                "category_id": 1})
        self._add_refer(r)
        for c in r["captions"]:
            self.lines["captions"][split].write(f"{c}\t{image_id}\n")
        self.lines["flickr30k"][split].write(json.dumps({"id": image_id, "img_path": f"{image_id}.png",
                                                         "sentences": r["retrieval"]}) + "\n")
        questions, annotations = self.vqa[split]
        for q in r["questions"]:
            questions.add({"image_id": image_id, "question": q["question"], "question_id": q["question_id"]})
            answers = [{"answer": a, "answer_confidence": "yes" if a == q["answer"] else "maybe", "answer_id": k + 1}
                       for k, a in enumerate(q["answers"])]
            annotations.add({"question_type": q["question_type"], "multiple_choice_answer": q["answer"],
                             "answers": answers, "image_id": image_id, "answer_type": q["answer_type"],
                             "question_id": q["question_id"]})
        for k, item in enumerate(r["vcr"]):
            row = {key: v for key, v in item.items() if key != "program"}
            annot_id = f"{split}-{image_id}" + (f"-{k}" if k else "")
            row.update(img_fn=f"{image_id}.png", metadata_fn=f"metadata/{image_id}.json",
                       annot_id=annot_id, img_id=f"{split}-{image_id}", movie="world")
            self.lines["vcr"][split].write(json.dumps(row) + "\n")
        self.scenes.write(json.dumps(_ground_truth(r)) + "\n")

    def _add_refer(self, r: dict) -> None:
        image_id, objects = r["image_id"], r["scene"]["objects"]
        for k, obj in enumerate(objects):
            x1, y1, x2, y2 = obj["box"]
            self.instances.add({"id": image_id * 100 + k, "image_id": image_id,
                                "category_id": SHAPES.index(obj["shape"]) + 1,
                                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                                "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0})
        for j, ref in enumerate(r["refs"]):
            ref_id = image_id * 10 + j
            sentences = [{"raw": t, "sent": t, "tokens": tokenize(t), "sent_id": ref_id * 10 + s}
                         for s, t in enumerate(ref["sentences"])]
            self.refs.append({"ref_id": ref_id, "ann_id": image_id * 100 + ref["object"], "image_id": image_id,
                              "split": r["split"], "sentences": sentences,
                              "sent_ids": [s["sent_id"] for s in sentences],
                              "category_id": SHAPES.index(objects[ref["object"]]["shape"]) + 1,
                              "file_name": f"{image_id}.png"})

    def finish(self) -> None:
        self.proposals.close({"images": self.images})
        self.instances.close({"images": self.images})
        for questions, annotations in self.vqa.values():
            questions.close()
            annotations.close()
        # A JSON round trip first: pickle's memo follows object identity, which differs between a
        # serial and a parallel run; after it both pickle the same object graph, byte for byte.
        # Protocol 2 is what the refer toolkit's own files use.
        self.refs_path.write_bytes(pickle.dumps(json.loads(json.dumps(self.refs)), protocol=2))


def _ground_truth(r: dict) -> dict:
    return {"image_id": r["image_id"], "split": r["split"], "scene": r["scene"],
            "questions": [{"question_id": q["question_id"], "family": q["family"], "program": q["program"]}
                          for q in r["questions"]],
            "refs": [{"ref_id": r["image_id"] * 10 + j, "object": ref["object"], "program": ref["program"]}
                     for j, ref in enumerate(r["refs"])],
            "vcr": [item["program"] for item in r["vcr"]]}


# ------------------------------------------------------------------------------------- driver


def _world_json(config: WorldConfig, splits: dict[str, list[int]]) -> dict:
    settings = asdict(config)
    if not config.extra_test_images:  # a world made before the setting existed is the same world
        del settings["extra_test_images"]
    return {"format_version": FORMAT_VERSION, "config": settings,
            "vocabulary": {"shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
                           "relations": list(RELATIONS) + ["nearest"]},
            "splits": splits}


def generate_world(out_dir: str | os.PathLike[str], config: WorldConfig | None = None, *, workers: int = 1,
                   progress: bool = True, **fields: Any) -> Path:
    """Generate (or finish, or reuse) a world in `out_dir`; returns the path of its world.json.

    `config` (default `WorldConfig()`) with `fields` overriding its fields, e.g.
    `generate_world(out, num_images=20, seed=3)`. Rerunning with the same settings reuses what
    exists (a finished world returns at once; images already drawn are kept). A directory
    holding a world made with other settings is refused rather than mixed.
    """
    config = replace(config or WorldConfig(), **fields)
    config.check()
    out = Path(out_dir)
    splits = split_ids(config)
    manifest = _world_json(config, splits)
    _claim(out, manifest)
    remove_stale_temps(out, recursive=True)  # what a killed run left half-written
    if (out / "world.json").exists() and read_json(out / "world.json", "the finished world's manifest") == manifest:
        return out / "world.json"
    split_of = {i: s for s, ids in splits.items() for i in ids}
    jobs = [(config, str(out), i, split_of[i]) for i in range(1, config.num_images + config.extra_test_images + 1)]
    (out / "images").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        writer = _WorldWriter(out, config, stack)
        for record in _run(jobs, workers, progress):
            writer.add(record)
        writer.finish()
    write_json(out / "world.json", manifest)
    return out / "world.json"


def _claim(out: Path, manifest: dict) -> None:
    """Refuse a directory that holds (part of) a world made with other settings."""
    marker = out / ".world-config.json"
    if marker.exists():
        previous = read_json(marker, "the settings of the world being generated")
        if previous != manifest["config"]:
            changed = sorted(k for k in manifest["config"] if previous.get(k) != manifest["config"][k])
            raise FileExistsError(f"{out} holds a world generated with other settings (differs in: "
                                  f"{', '.join(changed)}); choose another --out or delete it")
    else:
        write_json(marker, manifest["config"])


def _run(jobs: list[tuple], workers: int, progress: bool) -> Iterator[dict]:
    """Image records in job order, made here or by `workers` processes (same records either way)."""
    with tqdm(total=len(jobs), desc="world", unit="img", disable=not progress) as bar:
        if workers <= 1:
            for job in jobs:
                yield _make_image(job)
                bar.update()
            return
        # fork is cheapest where it exists; imap returns results in job order either way.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(workers) as pool:
            for record in pool.imap(_make_image, jobs, chunksize=32):
                yield record
                bar.update()
