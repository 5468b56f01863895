"""VQA v2: answer a question about an image, as multi-label classification over an answer vocabulary.

- Vocabulary: answers that are some training question's `multiple_choice_answer` at least
  `min_answer_count` times (the original keeps those seen >= 9 times in its training data),
  most frequent first. It is stored in the model's "vqa" head kwargs (config.json), so a
  checkpoint directory alone can name its answers; the head is the source of truth once it exists.
- Target: per question, the soft score of every vocabulary answer (0, .3, .6, .9, 1 from the 10
  annotators); answers outside the vocabulary are dropped from the target.
- Loss: BCE with logits against the soft scores, averaged over all B x A entries and multiplied by
  A, as the original (`loss.mean() * target.size(1)`); i.e. summed over answers, averaged over rows.
- Metric: VQA accuracy = mean over questions of the soft score of the top-scoring answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vilbert.core.batch import Batch
from vilbert.core.runtime import evaluating, model_device, unwrap_model
from vilbert.data.readers.vqa import VQAExample, read_vqa, vqa_paths
from vilbert.tasks.common import RegionTextTask, TaskData, batches
from vilbert.tasks.registry import Recipe, register_task

HEAD = "vqa"


def build_answer_vocab(examples: Sequence[VQAExample], min_count: int = 1) -> list[str]:
    """Answers chosen as a question's consensus (`multiple_choice_answer`) >= min_count times.

    Ordered by count (descending), then alphabetically, so the vocabulary is deterministic. A
    question without a consensus answer counts its most frequent annotator answer instead.
    """
    if min_count < 1:
        raise ValueError(f"min_answer_count must be >= 1, got {min_count}")
    counts: Counter[str] = Counter()
    for ex in examples:
        answer = ex.multiple_choice_answer
        if answer is None and ex.answer_counts:
            answer = max(sorted(ex.answer_counts), key=lambda a: ex.answer_counts[a])
        if answer is not None:
            counts[answer] += 1
    kept = [a for a, c in counts.items() if c >= min_count]
    return sorted(kept, key=lambda a: (-counts[a], a))


def soft_targets(scores: Sequence[dict[str, float]], index: dict[str, int]) -> torch.Tensor:
    """[B,A] soft scores; answers missing from `index` (the vocabulary) are dropped."""
    target = torch.zeros(len(scores), len(index))
    for row, per_answer in enumerate(scores):
        for answer, score in per_answer.items():
            column = index.get(answer)
            if column is not None:
                target[row, column] = score
    return target


def vqa_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The original's scaling: mean BCE over [B,A] times A (= per-row sum over answers, row mean)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="mean") * target.shape[1]


def vqa_accuracy(predicted: Sequence[str], scores: Sequence[dict[str, float]]) -> float:
    """Mean soft score of each question's predicted answer (0 for an answer no annotator gave)."""
    if not predicted:
        return 0.0
    return sum(s.get(p, 0.0) for p, s in zip(predicted, scores)) / len(predicted)


def answer_prior_accuracy(train: Sequence[VQAExample], test: Sequence[VQAExample]) -> float:
    """VQA accuracy on `test` of answering every question with its question type's best answer on
    `train` (highest summed soft score): what a model scores that reads the question's first
    words and never the image. A type unseen in `train` gets the best answer overall."""
    totals: dict[str | None, Counter[str]] = {}
    for ex in train:
        totals.setdefault(ex.question_type, Counter()).update(ex.scores)

    def top(counts: Counter[str]) -> str:  # ties go to the first answer alphabetically
        return min(counts.items(), key=lambda item: (-item[1], item[0]))[0] if counts else ""

    best = {kind: top(counts) for kind, counts in totals.items()}
    fallback = top(sum(totals.values(), Counter()))
    return vqa_accuracy([best.get(ex.question_type, fallback) for ex in test], [ex.scores for ex in test])


def top_answers(logits: torch.Tensor, answers: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Per row of [B,A] logits, the k best answers with their sigmoid scores (BCE-trained)."""
    probs = torch.sigmoid(logits.float())
    values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(answers[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]


def head_answers(model: nn.Module, fallback: Sequence[str] | None = None) -> list[str]:
    """The answer list of the model's VQA head (or `fallback` when the head stores none)."""
    heads = getattr(unwrap_model(model), "heads", {})
    if HEAD not in heads:
        raise KeyError(f"the model has no {HEAD!r} head; fine-tune it on VQA first")
    head = heads[HEAD]
    answers = getattr(head, "answers", None)
    if answers is None:
        if fallback is None:
            raise ValueError(f"the model's {HEAD!r} head has {head.fc2.out_features} outputs but no answer list; a "
                             "converted checkpoint gets one with `vilbert convert CKPT --config CONFIG "
                             "--answers trainval_label2ans.pkl --out DIR`")
        if len(fallback) != head.fc2.out_features:
            raise ValueError(f"the model's {HEAD!r} head has {head.fc2.out_features} outputs but no answer list, "
                             f"and the task's vocabulary ({len(fallback or [])} answers) does not fit it")
        answers = list(fallback)
    return list(answers)


@dataclass(frozen=True)
class _Split:
    examples: list[VQAExample]
    labelled: bool


@register_task("vqa", Recipe("vqa", max_text_length=23, batch_size=256, lr=4e-5, epochs=20))
class VQATask(RegionTextTask):
    """VQA v2 questions + annotations in their real file layout (DATA/vqa)."""

    def __init__(self, data: TaskData, min_answer_count: int = 1, answers: Sequence[str] | None = None,
                 head_hidden: int | None = None) -> None:
        super().__init__(data)
        self.min_answer_count = int(min_answer_count)
        self.head_hidden = head_hidden
        self._answers = list(answers) if answers is not None else None
        self._splits: dict[str, _Split] = {}
        self._index_cache: tuple[tuple[str, ...], dict[str, int]] | None = None

    # -- data ------------------------------------------------------------------------------------

    def examples(self, split: str) -> list[VQAExample]:
        if split not in self._splits:
            questions, annotations = vqa_paths(self.data.data_dir, split)
            if not questions.is_file():
                raise FileNotFoundError(f"VQA split {split!r}: {questions} does not exist")
            labelled = annotations.is_file()
            self._splits[split] = _Split(read_vqa(questions, annotations if labelled else None), labelled)
        return self._splits[split].examples

    @property
    def answers(self) -> list[str]:
        """The task's answer vocabulary (built from the train split on first use)."""
        if self._answers is None:
            self._answers = build_answer_vocab(self.examples("train"), self.min_answer_count)
            if not self._answers:
                raise ValueError(f"no answer reaches min_answer_count={self.min_answer_count} in "
                                 f"{vqa_paths(self.data.data_dir, 'train')[1]}")
        return self._answers

    def required_heads(self) -> dict[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {"num_answers": len(self.answers), "answers": list(self.answers)}
        if self.head_hidden:
            kwargs["hidden"] = int(self.head_hidden)
        return {HEAD: kwargs}

    def lengths(self, split: str) -> list[int]:
        return self.text_lengths([e.question for e in self.examples(split)])

    def dataset(self, split: str) -> list[VQAExample]:
        return self.examples(split)

    def collate(self, examples: Sequence[VQAExample]) -> Batch:
        return self.make_batch(
            [e.question for e in examples], [e.image_id for e in examples],
            meta={"question_id": [e.question_id for e in examples], "scores": [e.scores for e in examples]},
        )

    # -- loss and metric -------------------------------------------------------------------------

    def _index(self, answers: list[str]) -> dict[str, int]:
        key = tuple(answers)
        if self._index_cache is None or self._index_cache[0] != key:
            self._index_cache = (key, {a: i for i, a in enumerate(answers)})
        return self._index_cache[1]

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        # Targets are built against the head's own answer list: it is what the logits mean.
        answers = head_answers(model, self._answers)
        target = soft_targets(batch.meta["scores"], self._index(answers)).to(batch.input_ids.device)
        logits = model(**batch.model_inputs(), heads=(HEAD,)).logits[HEAD]  # [B,A]
        loss = vqa_loss(logits, target)
        with torch.no_grad():
            best = logits.argmax(-1)
            score = target.gather(1, best[:, None]).mean()
        return loss, {"vqa_score": float(score)}

    def predict(self, model: nn.Module, examples: Sequence[VQAExample], batch_size: int = 64) -> list[str]:
        """The top answer of each example."""
        answers = head_answers(model, self._answers)
        device = model_device(model)
        out: list[str] = []
        with evaluating(model):
            for batch in batches(self, list(examples), batch_size):
                logits = model(**batch.to(device).model_inputs(), heads=(HEAD,)).logits[HEAD]
                out += [answers[i] for i in logits.argmax(-1).tolist()]
        return out

    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        """accuracy over the split's questions, and per answer type (accuracy_yes_no,
        accuracy_number, accuracy_other) as the official evaluation reports it."""
        examples = self.examples(split)
        if not self._splits[split].labelled:
            raise FileNotFoundError(f"VQA split {split!r} has no annotations "
                                    f"({vqa_paths(self.data.data_dir, split)[1]}): it cannot be scored")
        predicted = self.predict(model, examples, batch_size)
        metrics = {"accuracy": vqa_accuracy(predicted, [e.scores for e in examples]), "questions": float(len(examples))}
        for kind in sorted({e.answer_type for e in examples if e.answer_type}):
            rows = [(p, e.scores) for p, e in zip(predicted, examples) if e.answer_type == kind]
            name = "accuracy_" + "".join(c if c.isalnum() else "_" for c in kind)
            metrics[name] = vqa_accuracy([p for p, _ in rows], [s for _, s in rows])
        return metrics

    def predictions(self, model: nn.Module, split: str, batch_size: int = 64) -> list[dict[str, Any]]:
        """The official results format, [{"question_id", "answer"}]; labels are not needed (test-dev)."""
        examples = self.examples(split)
        return [{"question_id": e.question_id, "answer": a}
                for e, a in zip(examples, self.predict(model, examples, batch_size))]

