"""The bundled bert-base-uncased WordPiece tokenizer against known tokenisations."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from vilbert.core.assets import minilm_dir
from vilbert.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_known_ids_and_specials(tok):
    assert tok.encode("hello world") == [101, 7592, 2088, 102]
    assert tok.encode("Hello, World!") == [101, 7592, 1010, 2088, 999, 102]
    assert tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)


def test_word_pieces_accents_and_unknown(tok):
    assert tok.tokens("Unaffable naïve café") == ["una", "##ffa", "##ble", "naive", "cafe"]
    assert tok.tokenize("\u2603") == [tok.unk_id]  # a snowman is not in the vocabulary
    assert tok.tokenize("a" * 150) == [tok.unk_id]  # words over 100 characters are unknown


def test_matches_the_packaged_fast_tokenizer(tok):
    # The same package ships a tokenizer.json built by transformers: an independent reference.
    reference = HFTokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    texts = ["A red cube to the LEFT of two blue spheres.", "What colour is the thing behind it?",
             "straßenbahn 1,234.5 don't-stop", "  spaces\tand\nnewlines  "]
    for text in texts:
        assert tok.encode(text) == reference.encode(text).ids, text
    pair = reference.encode("what is it?", "a green cone")
    assert tok.encode_pair("what is it?", "a green cone") == (pair.ids, pair.type_ids)


def test_truncation(tok):
    ids = tok.encode("one two three four five six", max_length=5)
    assert ids == [101, 2028, 2048, 2093, 102]
    ids, types = tok.encode_pair("one two three four five", "six seven", max_length=8)
    # 5 budget: the longer first side loses pieces until it is no longer longer.
    assert ids == [101, 2028, 2048, 2093, 102, 2416, 2698, 102]
    assert types == [0, 0, 0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="max_length 1"):
        tok.encode("x", max_length=1)


def test_batch_pad_decode(tok):
    batch = tok.encode_batch(["hello world", "hello"], max_length=36)
    assert batch == [tok.encode("hello world"), tok.encode("hello")]
    padded, mask = tok.pad(batch)
    assert padded[1] == [101, 7592, 102, 0] and mask[1] == [1, 1, 1, 0]
    assert tok.decode(padded[0]) == "hello world"
    assert tok.decode(tok.encode("unaffable")) == "unaffable"


def test_user_vocab_and_errors(tmp_path: Path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "cube", "##s"]) + "\n")
    small = load_tokenizer(vocab)
    assert small.vocab_size == 8
    assert small.encode("Red cubes ball") == [2, 5, 6, 7, 1, 3]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_tokenizer(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"lacks the special tokens"):
        load_tokenizer(bad)


def test_pair_truncation_trims_the_longer_side_and_the_second_on_a_tie(tok):
    """BERT's `_truncate_seq_pair`, as the original trims VCR's question + answer."""
    a, b = tok.tokenize("one two three four"), tok.tokenize("five six seven eight")
    ids, _ = tok.encode_pair("one two three four", "five six seven eight", max_length=3 + 7)
    assert ids == [tok.cls_id, *a, tok.sep_id, *b[:3], tok.sep_id]  # a tie at 4 + 4: the second loses first
    ids, _ = tok.encode_pair("one two three four five six", "seven", max_length=3 + 4)
    assert ids == [tok.cls_id, *tok.tokenize("one two three"), tok.sep_id, *tok.tokenize("seven"), tok.sep_id]
