"""Pretraining on image-caption pairs: masked multimodal modelling + alignment prediction.

The recipe of the paper (Lu et al. 2019), as one `Task`:
- a row is one (caption, image) pair of `DIR/captions/{split}.tsv`;
- with probability 0.5 the caption is replaced by a caption of another image (alignment target
  1 = not aligned; index 0 = aligned, as in the original);
- 15% of the words are chosen (80% [MASK], 10% random word, 10% unchanged) and 15% of the real
  regions (90% zeroed, 10% unchanged); the region target is the detector's `cls_prob` (KL);
- loss = masked-word CE + masked-region KL + alignment CE, equal weights; the two masked losses
  count only aligned rows. `alignment_weight` (default 1, the paper) scales the last term: at
  initialisation its gradient into the shared layers is ~1000x smaller than the masked-word
  loss's (it passes through two fresh poolers and their product), which the paper's 10 epochs
  outgrow and a few hundred steps do not (the demo uses 100; see README).
- `contrastive_weight` (default 0: the paper's three losses, unchanged) adds the dual-encoder
  objective (`vilbert.tasks.contrastive`): every row's own caption and image, unmasked, embedded
  by each stream alone, against the batch's other rows. It gives retrieval a first stage
  (`vilbert.model.two_stage`) that shares the streams' weights.

Misaligned rows are corrupted like aligned ones (as the original does) but get no masked-
modelling loss: corrupting only aligned rows would let the alignment head read "this row has
[MASK] tokens" as "aligned".

Dataset items are deterministic (a caption pair and its index); every random choice (negative
captions, word and region masking) is made in `collate`, from torch's global RNG, which the
trainer seeds per step; `evaluate` passes its own fixed generator instead.

Dimension letters: B rows, T tokens, R regions ([IMG] row 0 included), C region classes, N masked
words in the batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vilbert.core.batch import Batch
from vilbert.core.runtime import evaluating, model_device
from vilbert.core.subsets import data_subset
from vilbert.data.masking import IGNORE_INDEX, mask_regions, mask_words, region_kl_loss
from vilbert.data.readers.captions import CaptionPair, read_captions
from vilbert.tasks.common import RegionTextTask, TaskData
from vilbert.tasks.contrastive import HEAD as CONTRASTIVE, contrastive_loss, positive_pairs
from vilbert.tasks.registry import Recipe, register_task

HEADS = ("masked_word", "masked_region", "alignment")
ALIGNED, MISALIGNED = 0, 1  # alignment head classes (index 0 = aligned, as in the original)
EVAL_SEED = 1234  # evaluation masks and negatives are the same at every evaluation


@dataclass(frozen=True)
class PretrainExample:
    """One caption pair of a split, by its line index in that split's file."""

    index: int
    caption: str
    image_id: str
    split: str


class CaptionDataset(torch.utils.data.Dataset):
    """The caption pairs of one split (items are deterministic)."""

    def __init__(self, pairs: Sequence[CaptionPair], split: str) -> None:
        self.pairs = list(pairs)
        self.split = split

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> PretrainExample:
        pair = self.pairs[index]
        return PretrainExample(index, pair.caption, pair.image_id, self.split)


def captions_dir(data_dir: str | Path) -> Path:
    """A world directory (holding captions/) or the captions directory itself."""
    data_dir = Path(data_dir)
    return data_dir / "captions" if (data_dir / "captions").is_dir() else data_dir


class _NegativePool:
    """Captions that may replace a row's own: any caption of another image whose text is not
    also a caption of the row's image (templated captions repeat across images)."""

    def __init__(self, pairs: Sequence[CaptionPair], source: str) -> None:
        self.pairs = list(pairs)
        self.texts_of: dict[str, set[str]] = defaultdict(set)
        for pair in self.pairs:
            self.texts_of[pair.image_id].add(pair.caption)
        if len(self.texts_of) < 2:
            raise ValueError(f"{source}: alignment negatives need captions of at least 2 images, found {len(self.texts_of)}")

    def pick(self, image_id: str, generator: torch.Generator | None) -> CaptionPair:
        own = self.texts_of.get(image_id, set())
        for _ in range(1000):  # expected ~1 draw; bounded so a degenerate pool fails loudly
            j = int(torch.randint(len(self.pairs), (1,), generator=generator))
            candidate = self.pairs[j]
            if candidate.image_id != image_id and candidate.caption not in own:
                return candidate
        raise ValueError(f"no caption of another image differs from the captions of image {image_id!r}")


# The paper pretrains at batch 512 (on 8 GPUs); 32 is a default that fits one device.
RECIPE = Recipe("captions", max_text_length=36, batch_size=32, lr=1e-4, epochs=10)


@register_task("pretrain", RECIPE)
class PretrainTask(RegionTextTask):
    """ViLBERT's pretraining on (caption, image) pairs; see the module docstring."""

    def __init__(
        self,
        data: TaskData,
        word_mask_prob: float = 0.15,
        region_mask_prob: float = 0.15,
        misaligned_prob: float = 0.5,
        data_fraction: float = 1.0,
        alignment_weight: float = 1.0,
        contrastive_weight: float = 0.0,
    ) -> None:
        super().__init__(data)
        for name, value in (("alignment_weight", alignment_weight), ("contrastive_weight", contrastive_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.alignment_weight = alignment_weight
        self.contrastive_weight = contrastive_weight
        self.word_mask_prob = word_mask_prob
        self.region_mask_prob = region_mask_prob
        self.misaligned_prob = misaligned_prob
        # Negatives come from the same share of the training pairs the trainer uses (same
        # `data_subset`), so a data ablation never sees captions outside its share.
        self.data_fraction = data_fraction
        self._pairs: dict[str, list[CaptionPair]] = {}
        self._pools: dict[str, _NegativePool] = {}

    # -- data ------------------------------------------------------------------------------------

    def split_path(self, split: str) -> Path:
        return captions_dir(self.data.data_dir) / f"{split}.tsv"

    def has_split(self, split: str) -> bool:
        return self.split_path(split).is_file()

    def pairs(self, split: str) -> list[CaptionPair]:
        if split not in self._pairs:
            path = self.split_path(split)
            if not path.is_file():
                found = sorted(p.stem for p in path.parent.glob("*.tsv"))
                raise FileNotFoundError(f"no caption file {path} (splits found there: {found or 'none'})")
            pairs = read_captions(path)
            if not pairs:
                raise ValueError(f"{path} holds no caption pairs")
            self._check_images(pairs, path)
            self._pairs[split] = pairs
        return self._pairs[split]

    def _check_images(self, pairs: Sequence[CaptionPair], path: Path) -> None:
        known = set(self.store.ids())
        missing = sorted({p.image_id for p in pairs} - known)
        if missing:
            raise KeyError(
                f"{path}: {len(missing)} image ids have no features in store {self.store.path} "
                f"(first: {', '.join(missing[:5])}; the store holds {len(known)} images)"
            )

    def _pool(self, split: str) -> _NegativePool:
        if split not in self._pools:
            pairs = self.pairs(split)
            if split == "train" and self.data_fraction < 1.0:
                pairs = [pairs[i] for i in data_subset(len(pairs), self.data_fraction)]
            self._pools[split] = _NegativePool(pairs, str(self.split_path(split)))
        return self._pools[split]

    def lengths(self, split: str) -> list[int]:
        """The own caption's length (half the rows get another caption's, of no particular length)."""
        return self.text_lengths([p.caption for p in self.pairs(split)])

    def dataset(self, split: str) -> CaptionDataset:
        return CaptionDataset(self.pairs(split), split)

    def num_region_classes(self) -> int:
        """Width of the store's `cls_prob` (the masked-region target)."""
        classes = int(self.store.meta.get("num_classes") or 0)
        if classes <= 0:
            raise ValueError(
                f"feature store {self.store.path} has no cls_prob (num_classes={self.store.meta.get('num_classes')!r}): "
                "masked region modelling needs the detector's class distribution per region"
            )
        return classes

    def required_heads(self) -> dict[str, dict[str, Any]]:
        heads: dict[str, dict[str, Any]] = {"masked_word": {}, "masked_region": {"num_classes": self.num_region_classes()},
                                            "alignment": {}}
        if self.contrastive_weight > 0:
            heads[CONTRASTIVE] = {}
        return heads

    # -- batches ---------------------------------------------------------------------------------

    def collate(self, examples: Sequence[PretrainExample], generator: torch.Generator | None = None) -> Batch:
        """Pick negatives, tokenize, read regions, mask words and regions (all rows).

        targets: word_labels [B,T] (-1 = not predicted; misaligned rows all -1), region_masked
        [B,R] bool (aligned rows only), region_target [B,R,C] (cls_prob), alignment [B] (0 = aligned);
        with a contrastive weight also each row's own caption and its regions, unmasked
        (dual_input_ids, dual_token_type_ids, dual_attention_mask [B,T'], dual_image_features
        [B,R,D]) and dual_positives [B,B]. Those draw no random numbers, so the masks and
        negatives are the same at any weight.
        """
        if not examples:
            raise ValueError("pretraining collate needs at least one example")
        pool = self._pool(examples[0].split)
        flips = torch.rand(len(examples), generator=generator) < self.misaligned_prob  # [B]
        texts = [pool.pick(e.image_id, generator).caption if flip else e.caption for e, flip in zip(examples, flips.tolist())]
        image_ids = [e.image_id for e in examples]
        regions = self.regions(image_ids)
        if regions.cls_prob is None:
            self.num_region_classes()  # raises, naming the store
            raise ValueError(f"some images in store {self.store.path} lack cls_prob")
        batch = self.make_batch(texts, image_ids, regions=regions)
        aligned = ~flips  # [B]
        tok = self.tokenizer
        input_ids, word_labels = mask_words(
            batch.input_ids, batch.attention_mask, tok.vocab_size, tok.special_ids, tok.mask_id,
            self.word_mask_prob, generator,
        )
        features, region_chosen = mask_regions(batch.image_features, batch.image_mask, self.region_mask_prob, generator)
        clean_features = batch.image_features
        batch.input_ids, batch.image_features = input_ids, features
        batch.targets = {
            "word_labels": word_labels.masked_fill(~aligned[:, None], IGNORE_INDEX),
            "region_masked": region_chosen & aligned[:, None],
            "region_target": regions.cls_prob,
            "alignment": torch.where(aligned, ALIGNED, MISALIGNED).long(),
        }
        if self.contrastive_weight > 0:
            own = [e.caption for e in examples]  # the row's own caption, also where alignment replaced it
            ids, types, mask = self.encode_texts(own)
            batch.targets.update(dual_input_ids=ids, dual_token_type_ids=types, dual_attention_mask=mask,
                                 dual_image_features=clean_features, dual_positives=positive_pairs(own, image_ids))
        batch.meta = {"index": [e.index for e in examples], "image_id": image_ids, "caption": texts}
        return batch

    # -- loss and evaluation ---------------------------------------------------------------------

    def _terms(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Sums and counts of the three objectives over the batch (fp32)."""
        t = batch.targets
        positions = t["word_labels"] != IGNORE_INDEX  # [B,T]
        dual = self.contrastive_weight > 0
        extra: dict[str, Any] = {}
        if dual:  # the same forward (one per step, as DDP expects) embeds the unmasked pairs
            extra["dual_inputs"] = {
                "input_ids": t["dual_input_ids"], "token_type_ids": t["dual_token_type_ids"],
                "attention_mask": t["dual_attention_mask"], "image_features": t["dual_image_features"],
                "image_locations": batch.image_locations, "image_mask": batch.image_mask}
        out = model(**batch.model_inputs(), heads=HEADS + ((CONTRASTIVE,) if dual else ()),
                    masked_word_positions=positions, **extra)
        word_logits = out.logits["masked_word"].float()  # [N,V]
        word_labels = t["word_labels"][positions]  # [N]
        region_logits = out.logits["masked_region"]  # [B,R,C]
        if region_logits.shape[-1] != t["region_target"].shape[-1]:
            raise ValueError(
                f"the model's masked_region head predicts {region_logits.shape[-1]} classes but the "
                f"store's cls_prob has {t['region_target'].shape[-1]}"
            )
        align_logits = out.logits["alignment"].float()  # [B,2]
        n_regions = t["region_masked"].sum()
        terms = {}
        if dual:
            loss, accuracy = contrastive_loss(out.logits[CONTRASTIVE], t["dual_positives"])
            rows = torch.tensor(len(t["alignment"]), device=align_logits.device)
            terms = {"contrastive_sum": loss * rows, "contrastive_n": rows, "contrastive_correct": accuracy * rows}
        return terms | {
            "word_sum": F.cross_entropy(word_logits, word_labels, reduction="sum"),
            "word_n": positions.sum(),
            "word_correct": (word_logits.detach().argmax(-1) == word_labels).sum(),
            # region_kl_loss is a mean over masked regions (0 when there are none)
            "region_sum": region_kl_loss(region_logits, t["region_target"], t["region_masked"]) * n_regions.clamp(min=1),
            "region_n": n_regions,
            "align_sum": F.cross_entropy(align_logits, t["alignment"], reduction="sum"),
            "align_n": torch.tensor(len(t["alignment"]), device=align_logits.device),
            "align_correct": (align_logits.detach().argmax(-1) == t["alignment"]).sum(),
        }

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """masked-word CE (mean over masked words of aligned rows) + masked-region KL (mean over
        masked regions of aligned rows) + alignment_weight x alignment CE (mean over rows), each 0
        when empty; + contrastive_weight x the contrastive loss when that weight is not 0."""
        s = self._terms(model, batch)
        word = s["word_sum"] / s["word_n"].clamp(min=1)
        region = s["region_sum"] / s["region_n"].clamp(min=1)
        align = s["align_sum"] / s["align_n"]
        stats = {
            "masked_word_loss": float(word.detach()),
            "masked_region_loss": float(region.detach()),
            "alignment_loss": float(align.detach()),
            "alignment_acc": float(s["align_correct"]) / float(s["align_n"]),
            "masked_word_acc": float(s["word_correct"]) / max(1, int(s["word_n"])),
        }
        total = word + region + self.alignment_weight * align
        if "contrastive_sum" in s:
            contrastive = s["contrastive_sum"] / s["contrastive_n"]
            stats.update(contrastive_loss=float(contrastive.detach()),
                         contrastive_acc=float(s["contrastive_correct"]) / float(s["contrastive_n"]))
            total = total + self.contrastive_weight * contrastive
        return total, stats

    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        """The three losses (averaged over the whole split's masked words / regions / rows) and
        the alignment and masked-word accuracies, with fixed negatives and masks; with a
        contrastive weight also its loss and accuracy (in-batch: they depend on `batch_size`)."""
        data = self.dataset(split)
        items = [data[i] for i in range(len(data))]
        generator = torch.Generator().manual_seed(EVAL_SEED)
        device = model_device(model)
        totals: dict[str, float] = defaultdict(float)
        with evaluating(model):
            for start in range(0, len(items), batch_size):
                batch = self.collate(items[start : start + batch_size], generator=generator).to(device)
                for key, value in self._terms(model, batch).items():
                    totals[key] += float(value)
        word = totals["word_sum"] / max(1.0, totals["word_n"])
        region = totals["region_sum"] / max(1.0, totals["region_n"])
        align = totals["align_sum"] / max(1.0, totals["align_n"])
        metrics = {
            "loss": word + region + self.alignment_weight * align,
            "masked_word_loss": word,
            "masked_region_loss": region,
            "alignment_loss": align,
            "alignment_acc": totals["align_correct"] / max(1.0, totals["align_n"]),
            "masked_word_acc": totals["word_correct"] / max(1.0, totals["word_n"]),
        }
        if "contrastive_n" in totals:
            contrastive = totals["contrastive_sum"] / max(1.0, totals["contrastive_n"])
            metrics["loss"] += self.contrastive_weight * contrastive
            metrics.update(contrastive_loss=contrastive,
                           contrastive_acc=totals["contrastive_correct"] / max(1.0, totals["contrastive_n"]))
        return metrics
