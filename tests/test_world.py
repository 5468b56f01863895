"""The generated world: formats, determinism, splits, and the properties that make it test grounding."""

from __future__ import annotations

import collections
import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from vilbert.cli.world import main as world_main
from vilbert.data.readers import read_captions, read_flickr30k, read_refer, read_vcr, read_vqa, soft_score, vqa_paths
from vilbert.world import WorldConfig, generate_world
from vilbert.world.generate import make_scene
from vilbert.world.questions import annotator_answers, answer, vqa_questions
from vilbert.world.scene import Scene, resolve

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, num_images=60, seed=3, image_size=128, progress=False)
    return out


def _scenes(world: Path) -> dict[int, dict]:
    return {r["image_id"]: r for r in map(json.loads, (world / "scenes.jsonl").read_text().splitlines())}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_format_loads_with_its_reader(world):
    meta = json.loads((world / "world.json").read_text())
    for split in SPLITS:
        ids = {str(i) for i in meta["splits"][split]}
        caps = read_captions(world / "captions" / f"{split}.tsv")
        assert {c.image_id for c in caps} == ids and len(caps) == 3 * len(ids)
        flickr = read_flickr30k(world / "flickr30k" / f"{split}.jsonl")
        assert {f.image_id for f in flickr} == ids
        assert all(len(set(f.captions)) == 5 for f in flickr)
        vqa = read_vqa(*vqa_paths(world / "vqa", split))
        assert vqa and {e.image_id for e in vqa} <= ids
        assert all(sum(e.answer_counts.values()) == 10 for e in vqa)
        refs = read_refer(world / "refcoco+", split)
        assert refs and {r.image_id for r in refs} <= ids
        vcr = read_vcr(world / "vcr" / f"{split}.jsonl")
        assert vcr and all(len(v.answer_choices) == 4 == len(v.rationale_choices) for v in vcr)
    for image_id in meta["splits"]["train"]:
        assert (world / "images" / f"{image_id}.png").stat().st_size > 1000


def test_proposals_hold_true_boxes_and_10_to_36_per_image(world):
    props = json.loads((world / "proposals.json").read_text())
    assert len(props["images"]) == 60
    per_image = collections.defaultdict(list)
    for ann in props["annotations"]:
        assert isinstance(ann["image_id"], int)
        per_image[ann["image_id"]].append(ann["bbox"])
    assert all(10 <= len(b) <= 36 for b in per_image.values())
    for image_id, record in _scenes(world).items():
        for obj in record["scene"]["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert any(np.allclose(b, [x1, y1, x2 - x1, y2 - y1], atol=0.02) for b in per_image[image_id])


def test_splits_share_no_image(world):
    splits = json.loads((world / "world.json").read_text())["splits"]
    sets = [set(splits[s]) for s in SPLITS]
    assert all(sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(range(1, 61))
    for split in SPLITS:  # every file of a split speaks only of that split's images
        assert {int(r.image_id) for r in read_refer(world / "refcoco+", split)} <= set(splits[split])
        assert {int(v.image_id) for v in read_vcr(world / "vcr" / f"{split}.jsonl")} <= set(splits[split])


def test_same_seed_same_bytes_serial_or_parallel(tmp_path):
    generate_world(tmp_path / "a", num_images=12, seed=5, image_size=96, progress=False)
    generate_world(tmp_path / "b", num_images=12, seed=5, image_size=96, workers=2, progress=False)
    generate_world(tmp_path / "c", num_images=12, seed=6, image_size=96, progress=False)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert a["images/1.png"] != c["images/1.png"]



def test_extra_test_images_grow_test_alone(tmp_path):
    """Extra test images leave train and val byte for byte as they were (so models trained on them
    are the same), add only test images, and a world made without them is still reused as is."""
    base, grown = tmp_path / "base", tmp_path / "grown"
    generate_world(base, num_images=12, seed=5, image_size=96, progress=False)
    generate_world(grown, num_images=12, seed=5, image_size=96, extra_test_images=5, progress=False)
    before, after = (json.loads((w / "world.json").read_text()) for w in (base, grown))
    extra = set(after["splits"]["test"]) - set(before["splits"]["test"])
    assert extra == set(range(13, 18)) and set(before["splits"]["test"]) < set(after["splits"]["test"])
    assert {s: after["splits"][s] for s in ("train", "val")} == {s: before["splits"][s] for s in ("train", "val")}
    a, b = _tree(base), _tree(grown)
    for split in ("train", "val"):
        for name in ("captions/{}.tsv", "flickr30k/{}.jsonl", "vcr/{}.jsonl",
                     "vqa/v2_OpenEnded_mscoco_{}_questions.json", "vqa/v2_mscoco_{}_annotations.json"):
            assert a[name.format(split)] == b[name.format(split)], name.format(split)
    assert all(a[k] == b[k] for k in a if k.startswith("images/"))
    assert {int(v.image_id) for v in read_vcr(grown / "vcr" / "test.jsonl")} & extra  # the new images are asked about
    assert "extra_test_images" not in before["config"]  # worlds from before the setting keep their manifest
    generate_world(base, num_images=12, seed=5, image_size=96, extra_test_images=0, progress=False)
    with pytest.raises(FileExistsError, match="extra_test_images"):
        generate_world(base, num_images=12, seed=5, image_size=96, extra_test_images=3, progress=False)

def test_rerun_reuses_and_resumes(tmp_path):
    out = tmp_path / "w"
    generate_world(out, num_images=8, seed=1, image_size=96, progress=False)
    before = _tree(out)
    stamp = (out / "world.json").stat().st_mtime_ns
    generate_world(out, num_images=8, seed=1, image_size=96, progress=False)
    assert (out / "world.json").stat().st_mtime_ns == stamp  # finished world: nothing rewritten
    (out / "images" / "3.png").unlink()
    (out / "world.json").unlink()  # as if interrupted before the end
    generate_world(out, num_images=8, seed=1, image_size=96, progress=False)
    assert _tree(out) == before
    with pytest.raises(FileExistsError, match="seed"):
        generate_world(out, num_images=8, seed=2, image_size=96, progress=False)


def test_each_expression_names_exactly_one_object(world):
    scenes = _scenes(world)
    instances = json.loads((world / "refcoco+" / "instances.json").read_text())
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    expressions = read_refer(world / "refcoco+")
    by_ref = {ref["ref_id"]: (image_id, ref) for image_id, r in scenes.items() for ref in r["refs"]}
    assert len(by_ref) >= 100
    for expr in expressions:
        image_id, ref = by_ref[expr.ref_id]
        scene = Scene.from_dict(scenes[image_id]["scene"])
        assert resolve(scene, ref["program"]) == [ref["object"]], expr.sentence
        x1, y1, x2, y2 = scene.objects[ref["object"]].box
        assert np.allclose(expr.box, (x1, y1, x2, y2), atol=0.02)
        assert expr.ann_id in boxes
    relational = sum("rel" in ref["program"] for _, ref in by_ref.values())
    assert 0.2 < relational / len(by_ref) < 0.9  # attributes alone and relations both occur


def test_written_answers_are_the_scene_answers(world):
    scenes = _scenes(world)
    for split in SPLITS:
        examples = {e.question_id: e for e in read_vqa(*vqa_paths(world / "vqa", split))}
        for image_id in json.loads((world / "world.json").read_text())["splits"][split]:
            scene = Scene.from_dict(scenes[image_id]["scene"])
            for q in scenes[image_id]["questions"]:
                assert examples[q["question_id"]].multiple_choice_answer == answer(scene, q["program"])


# ---------------------------------------------- properties of the questions, on many scenes (no images)


def _questions(n_images: int, seed: int = 11) -> list[tuple[int, object, list[str]]]:
    config = WorldConfig(num_images=n_images, seed=seed)
    out = []
    for image_id in range(1, n_images + 1):
        rng = np.random.default_rng([seed, image_id, 3])
        for q in vqa_questions(make_scene(config, image_id), rng):
            out.append((image_id, q, annotator_answers(q.answer, rng)))
    return out


@pytest.fixture(scope="module")
def many_questions():
    return _questions(1000)


def test_answers_are_balanced_within_each_type(many_questions):
    groups: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for _, q, _ in many_questions:  # colour and shape questions have answer sets of their own
        groups[(q.family, q.question_type)][q.answer] += 1
    assert {f for f, _ in groups} == {"existence", "counting", "attribute", "relation"}
    for key, counts in groups.items():
        total, top = sum(counts.values()), counts.most_common(1)[0][1]
        # No answer takes more than 1.5x its fair share (yes/no: at most 55%, 4 counts: 37.5%).
        bound = 0.55 if len(counts) == 2 else 1.5 / len(counts)
        assert top / total <= bound, (key, counts.most_common(4))


def test_relation_questions_depend_on_both_positions(many_questions):
    config = WorldConfig(num_images=1000, seed=11)
    checked = 0
    for image_id, q, _ in many_questions:
        if q.family != "relation":
            continue
        scene = make_scene(config, image_id)
        if q.program["op"] == "relate":
            a, b = resolve(scene, {"filter": q.program["a"]}), resolve(scene, {"filter": q.program["b"]})
            target, other = a[0], b[0]
        else:
            target = resolve(scene, q.program["object"])[0]
            other = resolve(scene, {"filter": q.program["object"]["anchor"]})[0]
        swapped = copy.deepcopy(scene)
        ta, tb = swapped.objects[target], swapped.objects[other]
        (ta.cx, ta.cy), (tb.cx, tb.cy) = (tb.cx, tb.cy), (ta.cx, ta.cy)
        if q.program["op"] == "relate":
            assert answer(swapped, q.program) != q.answer
        else:  # the question no longer picks out the same object
            assert resolve(swapped, q.program["object"]) != [target]
        checked += 1
    assert checked > 300


def _template(question: str) -> str:
    question = re.sub(r"\b(circle|square|triangle|star|diamond|cross)(e?s)?\b", "S", question)
    return re.sub(r"\b(red|green|blue|yellow|purple|orange|cyan|white|small|large)\b", "A", question)


def text_only_gain(questions) -> tuple[float, float, float]:
    """(majority-per-type accuracy, best text-only accuracy, gain) fit on even, scored on odd images."""
    train = [(q, a) for i, q, a in questions if i % 2 == 0]
    test = [(q, a) for i, q, a in questions if i % 2 == 1]

    def fit(key):
        votes = collections.defaultdict(collections.Counter)
        for q, _ in train:
            votes[key(q)][q.answer] += 1
        return {k: v.most_common(1)[0][0] for k, v in votes.items()}

    def accuracy(predict):
        return float(np.mean([soft_score(a.count(predict(q))) for q, a in test]))

    kind = fit(lambda q: (q.family, q.question_type))
    majority = accuracy(lambda q: kind[(q.family, q.question_type)])
    texts = []
    for key in (lambda q: q.question, lambda q: _template(q.question)):
        table = fit(key)
        texts.append(accuracy(lambda q, table=table, key=key: table.get(key(q), kind[(q.family, q.question_type)])))
    return majority, max(texts), max(texts) - majority


def test_text_alone_barely_beats_the_majority_answer(many_questions):
    majority, text_only, gain = text_only_gain(many_questions)
    assert 0.3 < majority < 0.6
    assert gain < 0.05, f"text-only {text_only:.3f} vs majority {majority:.3f}"


def test_annotators_disagree_sometimes(many_questions):
    scores = [soft_score(a.count(x)) for _, q, a in many_questions for x in set(a)]
    assert all(soft_score(a.count(q.answer)) == 1.0 for _, q, a in many_questions)
    assert any(0 < s < 1 for s in scores)
    disagreeing = np.mean([len(set(a)) > 1 for _, _, a in many_questions])
    assert 0.3 < disagreeing < 0.9


def test_a_wrong_yes_no_answer_rarely_earns_credit(many_questions):
    # With noisy annotators a confusion gets 3+ votes and "yes" to everything scores ~0.7; people
    # agree on yes/no questions, and the metric must reward reading the image.
    yes_no = [(q, a) for _, q, a in many_questions if q.answer_type == "yes/no"]
    always_yes = np.mean([soft_score(a.count("yes")) for _, a in yes_no])
    wrong = [soft_score(a.count("no" if q.answer == "yes" else "yes")) for q, a in yes_no]
    assert 0.45 < always_yes < 0.6
    assert np.mean(np.array(wrong) >= 0.9) < 0.05  # full or nearly full credit for the wrong answer


def test_cli_writes_a_world_and_rejects_bad_fractions(tmp_path, capsys):
    assert world_main(["--out", str(tmp_path / "w"), "--images", "5", "--image-size", "96", "--no-progress"]) == 0
    assert (tmp_path / "w" / "world.json").exists()
    assert world_main(["--out", str(tmp_path / "x"), "--images", "5", "--train-fraction", "0.95"]) == 2
    assert "test" in capsys.readouterr().err


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_referents_need_the_image(world):
    """Without looking, the best guess is a proposal's score: it finds the referent rarely."""
    props = json.loads((world / "proposals.json").read_text())
    boxes = collections.defaultdict(list)
    for a in props["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append((a["score"], (x, y, x + w, y + h)))
    exprs = read_refer(world / "refcoco+")
    top = np.mean([_iou(max(boxes[int(e.image_id)])[1], e.box) >= 0.5 for e in exprs])
    hit_somewhere = np.mean([any(_iou(b, e.box) >= 0.5 for _, b in boxes[int(e.image_id)]) for e in exprs])
    assert hit_somewhere == 1.0  # the true box is always among the proposals
    assert top < 0.4, top


def test_vcr_rationales_need_the_image(world):
    """Every rationale reads like the right one: same template and length, and each agrees with the
    right answer's words, so question + answer text alone cannot pick it (it once could: 1.0)."""
    from vilbert.data.readers.vcr import tokens_to_words

    items = [v for split in ("train", "val", "test") for v in read_vcr(world / "vcr" / f"{split}.jsonl")]
    assert len(items) >= 10
    positions = collections.Counter()
    for v in items:
        def words(tokens):
            return tokens_to_words(tokens, v.objects)[0]

        right_answer = set(words(v.answer_choices[v.answer_label]))
        rationales = [words(r) for r in v.rationale_choices]
        assert len({len(r) for r in rationales}) == 1, rationales
        content = right_answer - {"the", "is", "it", "It", ".", "?"} - set(words(v.question))
        for r in rationales:
            assert content <= set(r), (content, r)
        positions[v.rationale_label] += 1
    assert len(positions) == 4  # the right rationale is not always in one place


def test_several_vcr_items_per_image_ask_about_different_objects(tmp_path):
    one = generate_world(tmp_path / "one", num_images=12, seed=2, image_size=96, progress=False).parent
    three = generate_world(tmp_path / "three", num_images=12, seed=2, image_size=96, vcr_per_image=3, progress=False).parent
    items = {n: [v for s in SPLITS for v in read_vcr(w / "vcr" / f"{s}.jsonl")] for n, w in (("one", one), ("three", three))}
    assert len(items["three"]) > 1.5 * len(items["one"])
    assert len({v.annot_id for v in items["three"]}) == len(items["three"])
    per_image = collections.Counter(v.image_id for v in items["three"])
    assert max(per_image.values()) == 3
    programs = {r["image_id"]: r["vcr"] for r in map(json.loads, (three / "scenes.jsonl").read_text().splitlines())}
    for image_id, count in per_image.items():
        pairs = [(p["anchor"], p["rel"]) for p in programs[int(image_id)]]
        assert len(pairs) == count == len(set(pairs))  # one item per (anchor, relation)
    # The first item of each image is the one a one-item world asks (same random draws).
    firsts = {v.image_id: v.question for v in items["three"] if not v.annot_id.count("-") > 1}
    assert firsts == {v.image_id: v.question for v in items["one"]}
    with pytest.raises(ValueError, match="vcr_per_image=0"):
        generate_world(tmp_path / "bad", num_images=12, seed=2, image_size=96, vcr_per_image=0, progress=False)


def test_difficulty_knobs_bound_objects_and_proposals(tmp_path):
    generate_world(tmp_path / "w", num_images=12, seed=2, image_size=96, max_objects=3, max_proposals=12,
                   captions_per_image=5, progress=False)
    scenes = [json.loads(line) for line in (tmp_path / "w" / "scenes.jsonl").read_text().splitlines()]
    assert all(2 <= len(s["scene"]["objects"]) <= 3 for s in scenes)
    boxes = json.loads((tmp_path / "w" / "proposals.json").read_text())
    per_image = collections.Counter(a["image_id"] for a in boxes["annotations"])
    assert max(per_image.values()) <= 12 and min(per_image.values()) >= 10
    with pytest.raises(ValueError, match="max_proposals=10"):
        WorldConfig(num_images=12, max_objects=4, max_proposals=10).check()
