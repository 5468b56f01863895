"""VCR: Q->A and QA->R as 4-way multiple choice, scored by one `pair_score` head.

Each question becomes one row per choice, `[CLS] a [SEP] b [SEP]` with the image's regions:
Q->A pairs (question, answer choice); QA->R pairs (question + the right answer, rationale choice).
Object-index tokens are spelled as the objects' names. The head gives one score per row; the rows of
a question are reshaped to [Q,C] and trained with cross-entropy over the choices.

As in the original, one model with one head (`vil_logit` there, `pair_score` here) scores both
sub-tasks: the task "vcr" trains on both and reports Q->A, QA->R and Q->AR (a question counts for
Q->AR only when both its answer and its rationale are right); "vcr_q_a" and "vcr_qa_r" train and
report one sub-task each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vilbert.core.batch import Batch
from vilbert.core.regions import RegionBatch
from vilbert.core.runtime import evaluating, model_device
from vilbert.data.readers.vcr import VCRExample, read_vcr, tokens_to_words
from vilbert.tasks.common import RegionTextTask, TaskData, batches
from vilbert.tasks.registry import Recipe, register_task

HEAD = "pair_score"
SUBTASKS = ("q_a", "qa_r")


@dataclass(frozen=True)
class VCRItem:
    """One question of one sub-task: its (text a, text b) pair per choice and the right choice."""

    annot_id: str
    image_id: str
    subtask: str  # "q_a" or "qa_r"
    pairs: tuple[tuple[str, str], ...]
    label: int  # -1 when the file carries no label


def _text(tokens: Sequence[Any], objects: tuple[str, ...]) -> str:
    words, _ = tokens_to_words(tuple(tokens), objects)
    return " ".join(words)


def make_item(example: VCRExample, subtask: str) -> VCRItem:
    """The choice pairs of `example` for `subtask` (QA->R needs the answer label)."""
    objects = example.objects
    question = _text(example.question, objects)
    if subtask == "q_a":
        pairs = tuple((question, _text(a, objects)) for a in example.answer_choices)
        label = example.answer_label
    elif subtask == "qa_r":
        if example.answer_label is None:
            raise ValueError(f"VCR {example.annot_id}: QA->R needs the right answer, but answer_label is missing")
        context = f"{question} {_text(example.answer_choices[example.answer_label], objects)}"
        pairs = tuple((context, _text(r, objects)) for r in example.rationale_choices)
        label = example.rationale_label
    else:
        raise ValueError(f"unknown VCR sub-task {subtask!r}; valid: {', '.join(SUBTASKS)}")
    return VCRItem(example.annot_id, example.image_id, subtask, pairs, -1 if label is None else int(label))


def choice_scores(flat: torch.Tensor, choices: int) -> torch.Tensor:
    """[Q*C] row scores -> [Q,C] (rows of a question are consecutive)."""
    if flat.numel() % choices:
        raise ValueError(f"{flat.numel()} row scores do not split into groups of {choices} choices")
    return flat.view(-1, choices)  # [Q*C] -> [Q,C]


def q_ar_accuracy(q_a_right: Mapping[str, bool], qa_r_right: Mapping[str, bool]) -> float:
    """Share of questions whose answer and rationale are both right (over questions in both)."""
    common = q_a_right.keys() & qa_r_right.keys()
    if not common:
        return 0.0
    return sum(q_a_right[k] and qa_r_right[k] for k in common) / len(common)


class VCRTask(RegionTextTask):
    """VCR jsonl files (DATA/vcr/{split}.jsonl) in their real format."""

    subtasks: ClassVar[tuple[str, ...]] = SUBTASKS

    def __init__(self, data: TaskData) -> None:
        super().__init__(data)
        self._examples: dict[str, list[VCRExample]] = {}
        self._items: dict[str, list[VCRItem]] = {}

    def examples(self, split: str) -> list[VCRExample]:
        if split not in self._examples:
            path = Path(self.data.data_dir) / f"{split}.jsonl"
            if not path.is_file():
                raise FileNotFoundError(f"VCR split {split!r}: {path} does not exist")
            self._examples[split] = read_vcr(path)
        return self._examples[split]

    def items(self, split: str, subtask: str | None = None) -> list[VCRItem]:
        if split not in self._items:
            self._items[split] = [make_item(e, s) for s in self.subtasks for e in self.examples(split)]
        items = self._items[split]
        return items if subtask is None else [i for i in items if i.subtask == subtask]

    def required_heads(self) -> dict[str, dict[str, Any]]:
        return {HEAD: {}}

    def dataset(self, split: str) -> list[VCRItem]:
        return self.items(split)

    def collate(self, items: Sequence[VCRItem]) -> Batch:
        choices = len(items[0].pairs)
        for item in items:
            if len(item.pairs) != choices:
                raise ValueError(f"VCR {item.annot_id} ({item.subtask}) has {len(item.pairs)} choices; "
                                 f"this batch has {choices}")
        regions = self.regions([i.image_id for i in items])
        # One region read per question, repeated for its choices: [Q,R,*] -> [Q*C,R,*].
        regions = RegionBatch(*(t.repeat_interleave(choices, dim=0) for t in regions))  # cls_prob unused
        texts = [pair for item in items for pair in item.pairs]
        return self.make_batch(
            texts, [i.image_id for i in items for _ in range(choices)],
            targets={"label": torch.tensor([i.label for i in items])},
            meta={"annot_id": [i.annot_id for i in items], "subtask": [i.subtask for i in items],
                  "choices": [choices]},
            regions=regions,
        )

    def scores(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        flat = model(**batch.model_inputs(), heads=(HEAD,)).logits[HEAD]  # [Q*C]
        return choice_scores(flat, batch.meta["choices"][0])  # [Q,C]

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch.targets["label"]
        if bool((labels < 0).any()):
            raise ValueError(f"VCR batch has unlabelled questions: {batch.meta['annot_id'][:5]}")
        scores = self.scores(model, batch)
        loss = F.cross_entropy(scores.float(), labels)  # mean over questions
        return loss, {"accuracy": float((scores.argmax(-1) == labels).float().mean())}

    def right(self, model: nn.Module, split: str, subtask: str, batch_size: int = 64) -> dict[str, bool]:
        """annot_id -> whether the top-scoring choice is the labelled one."""
        items = self.items(split, subtask)
        unlabelled = [i.annot_id for i in items if i.label < 0]
        if unlabelled:
            raise ValueError(f"VCR split {split!r} has no labels for {len(unlabelled)} questions "
                             f"(first: {unlabelled[:3]}): it cannot be scored")
        device = model_device(model)
        out: dict[str, bool] = {}
        with evaluating(model):
            for batch in batches(self, items, batch_size):
                best = self.scores(model, batch.to(device)).argmax(-1).cpu()
                for annot_id, guess, label in zip(batch.meta["annot_id"], best.tolist(), batch.targets["label"].tolist()):
                    out[annot_id] = guess == label
        return out

    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        # Batches of questions: each has 4 rows, so keep the rows per forward near `batch_size`.
        per_batch = max(1, batch_size // 4)
        right = {s: self.right(model, split, s, per_batch) for s in self.subtasks}
        metrics = {s: sum(r.values()) / max(1, len(r)) for s, r in right.items()}
        if len(self.subtasks) == 1:
            metrics["accuracy"] = metrics[self.subtasks[0]]
        else:
            metrics["q_ar"] = q_ar_accuracy(right["q_a"], right["qa_r"])
        metrics["questions"] = float(len(self.examples(split)))
        return metrics


RECIPE = Recipe("vcr", max_text_length=60, batch_size=64, lr=2e-5, epochs=20)


@register_task("vcr", RECIPE)
class VCRBothTask(VCRTask):
    """Q->A and QA->R together (one head), reporting q_a, qa_r and q_ar."""

    subtasks = SUBTASKS


@register_task("vcr_q_a", RECIPE)
class VCRAnswerTask(VCRTask):
    subtasks = ("q_a",)


@register_task("vcr_qa_r", RECIPE)
class VCRRationaleTask(VCRTask):
    subtasks = ("qa_r",)
