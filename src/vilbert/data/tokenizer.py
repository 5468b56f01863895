"""WordPiece tokenisation with the bert-base-uncased vocabulary, on the `tokenizers` library.

The vocabulary is bert-base-uncased's, found by `vilbert.core.assets` (nothing is downloaded at
run time). A user may pass their own `vocab.txt` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from vilbert.core.assets import bundled_vocab_path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _read_vocab(path: Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            token = line.rstrip("\n")
            vocab.setdefault(token, index)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary {path} lacks the special tokens {missing}")
    return vocab


class Tokenizer:
    """BERT uncased WordPiece: `[CLS] a [SEP]` and `[CLS] a [SEP] b [SEP]`, ids as Python lists."""

    def __init__(self, vocab_path: str | Path, lowercase: bool = True) -> None:
        self.vocab_path = Path(vocab_path)
        if not self.vocab_path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {self.vocab_path}")
        self.vocab = _read_vocab(self.vocab_path)
        self._inverse = {i: t for t, i in self.vocab.items()}
        hf = _HFTokenizer(models.WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        hf.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.decoder = decoders.WordPiece(prefix="##")
        self._hf = hf
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.mask_id = self.vocab["[MASK]"]

    @property
    def vocab_size(self) -> int:
        return len(self._inverse)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids never chosen for masking or as random replacements: [PAD] [UNK] [CLS] [SEP] [MASK]."""
        return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)

    def tokenize(self, text: str) -> list[int]:
        """Word-piece ids of `text`, without special tokens."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def tokens(self, text: str) -> list[str]:
        return self._hf.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """`[CLS] text [SEP]`, the text truncated so the whole fits in `max_length` ids."""
        pieces = self.tokenize(text)
        if max_length is not None:
            _check_max_length(max_length, 2)
            pieces = pieces[: max_length - 2]
        return [self.cls_id, *pieces, self.sep_id]

    def encode_pair(self, a: str, b: str, max_length: int | None = None) -> tuple[list[int], list[int]]:
        """`[CLS] a [SEP] b [SEP]` and its segment ids (0 for a's part, 1 for b's).

        When too long, the longer side loses its last piece, repeatedly, and on a tie the second
        (BERT's `_truncate_seq_pair`, which the original uses).
        """
        pa, pb = self.tokenize(a), self.tokenize(b)
        if max_length is not None:
            _check_max_length(max_length, 3)
            budget = max_length - 3
            while len(pa) + len(pb) > budget:
                if len(pa) > len(pb):
                    pa.pop()
                else:
                    pb.pop()
        ids = [self.cls_id, *pa, self.sep_id, *pb, self.sep_id]
        types = [0] * (len(pa) + 2) + [1] * (len(pb) + 1)
        return ids, types

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        pieces = [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]
        if max_length is not None:
            _check_max_length(max_length, 2)
            pieces = [p[: max_length - 2] for p in pieces]
        return [[self.cls_id, *p, self.sep_id] for p in pieces]

    def pad(self, sequences: Sequence[Sequence[int]], pad_value: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
        """Pad to the longest sequence of this batch: (padded ids, attention mask 1 = real)."""
        value = self.pad_id if pad_value is None else pad_value
        longest = max((len(s) for s in sequences), default=0)
        padded = [list(s) + [value] * (longest - len(s)) for s in sequences]
        mask = [[1] * len(s) + [0] * (longest - len(s)) for s in sequences]
        return padded, mask

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`, word pieces joined; special tokens (and padding) dropped by default."""
        specials = set(self.special_ids) - {self.unk_id} if skip_special else set()
        kept = [int(i) for i in ids if int(i) not in specials]
        return self._hf.decode(kept, skip_special_tokens=False)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._inverse.get(int(i), "[UNK]") for i in ids]

    def __len__(self) -> int:
        return self.vocab_size


def _check_max_length(max_length: int, minimum: int) -> None:
    if max_length < minimum:
        raise ValueError(f"max_length {max_length} leaves no room for text (needs at least {minimum})")


_CACHE: dict[str, Tokenizer] = {}


def load_tokenizer(vocab_path: str | Path | None = None) -> Tokenizer:
    """The bundled bert-base-uncased tokenizer, or one on a user's `vocab.txt` (cached per path)."""
    path = bundled_vocab_path() if vocab_path is None else Path(vocab_path)
    key = str(path.resolve()) if path.exists() else str(path)
    if key not in _CACHE:
        _CACHE[key] = Tokenizer(path)
    return _CACHE[key]
