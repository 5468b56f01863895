"""Text (and one image's regions) -> the model's input tensors.

Tasks build their batches from `encode_texts`; `pair_inputs` makes the inputs of a single
(text, image) pair for prediction and for drawing attention.

Dimension letters: B rows, T tokens (padded to the longest text), R region rows ([IMG] included),
D region feature width.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vilbert.core.regions import ImageRegions, collate_regions
from vilbert.data.tokenizer import Tokenizer


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str] | Sequence[tuple[str, str]],
                 max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texts (or (a, b) pairs) -> ids, token types and mask [B,T], padded to the longest."""
    ids, types = [], []
    for text in texts:
        if isinstance(text, tuple):
            i, t = tokenizer.encode_pair(text[0], text[1], max_length)
        else:
            i = tokenizer.encode(text, max_length)
            t = [0] * len(i)
        ids.append(i)
        types.append(t)
    padded, mask = tokenizer.pad(ids)
    padded_types, _ = tokenizer.pad(types, pad_value=0)
    return torch.tensor(padded), torch.tensor(padded_types), torch.tensor(mask)


def pair_inputs(tokenizer: Tokenizer, text: str, regions: ImageRegions, max_text_length: int,
                max_regions: int | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The model's keyword inputs for one sentence and one image's regions, on `device`."""
    ids, types, mask = encode_texts(tokenizer, [text], max_text_length)  # [1,T] each
    batch = collate_regions([regions], max_regions)  # [1,R,D], [1,R,5], [1,R]
    inputs = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
              "image_features": batch.features, "image_locations": batch.locations, "image_mask": batch.mask}
    return {k: v.to(device) for k, v in inputs.items()}
