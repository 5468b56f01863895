"""`vilbert index` and `vilbert search` on the tiny task world: the index holds what embedding each
image alone gives, search equals a brute-force ranking, ViLBERT re-ranks the top K, the index
refuses another model or store (by checksum) and a damaged file, and it is written atomically."""

from __future__ import annotations

import pytest
import torch

from vilbert.cli import index as index_cli
from vilbert.cli import search as search_cli
from vilbert.cli.main import main as vilbert
from vilbert.data.inputs import encode_texts
from vilbert.data.tokenizer import load_tokenizer
from vilbert.features.store import FeatureStore
from vilbert.io.atomic import TEMP_SUFFIX
from vilbert.model import build_model, load_preset, save_pretrained
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_matrix
from vilbert.pipelines.index import ImageIndex
from vilbert.pipelines.search import SearchRun, search
from vilbert.tasks import TaskData

QUERY = "a red cube left of a ball"


def scrambled(seed: int = 0, dual: bool = True):
    torch.manual_seed(seed)
    model = build_model(load_preset("tiny"))
    model.add_head("pair_score")
    if dual:
        model.add_head("contrastive")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def built(task_world, tmp_path_factory):
    base = tmp_path_factory.mktemp("index")
    model = scrambled()
    save_pretrained(model, base / "model")
    out = base / "images.index"
    assert vilbert(["index", "--checkpoint", str(base / "model"), "--features", str(task_world / "features.lmdb"),
                           "--out", str(out), "--images", str(task_world / "images"), "--batch-size", "7",
                           "--no-progress"]) == 0
    return base, model, out


def regions(store, ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = store.get_many(ids, max_regions=TaskData.max_regions)
    return batch.features, batch.locations, batch.mask


def query_embedding(model) -> torch.Tensor:
    ids, types, mask = encode_texts(load_tokenizer(), [QUERY], SearchRun.max_text_length)
    with torch.no_grad():
        return model.embed_text(ids, types, mask)[0]


def test_index_search_equals_brute_force(task_world, built, capsys):
    _, model, out = built
    index = ImageIndex.read(out)
    store = FeatureStore(task_world / "features.lmdb")
    assert index.image_ids == store.ids()
    # Brute force: each image embedded alone, unpadded, then one dot product each.
    with torch.no_grad():
        alone = torch.cat([model.embed_images(*regions(store, [i])) for i in store.ids()])
    torch.testing.assert_close(index.embeddings, alone, atol=1e-5, rtol=1e-5)
    brute = alone @ query_embedding(model)
    expected = [store.ids()[i] for i in brute.argsort(descending=True).tolist()]
    gaps = brute.sort(descending=True).values.diff().abs()
    assert bool((gaps > 1e-4).all())  # no near-ties: the order is well defined
    result = search(SearchRun(index=out, text=QUERY, top=len(expected)))
    assert [h.image_id for h in result.hits] == expected
    assert [h.rank for h in result.hits] == list(range(1, len(expected) + 1))
    assert [h.score for h in result.hits] == pytest.approx(brute.sort(descending=True).values.tolist(), abs=1e-5)
    assert vilbert(["search", "--index", str(out), "--text", QUERY, "--top", "3"]) == 0  # the installed command's way in
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in printed[2:]] == expected[:3] and f"{len(expected)} images" in printed[0]


def test_rerank_top_orders_the_k_best_by_vilbert(task_world, built, tmp_path):
    _, model, out = built
    first = [h.image_id for h in search(SearchRun(index=out, text=QUERY, top=20)).hits]
    k = 6
    result = search(SearchRun(index=out, text=QUERY, top=8, rerank_top=k, draw=tmp_path / "hits.png"))
    reranked = result.hits[:k]
    assert sorted(h.image_id for h in reranked) == sorted(first[:k])
    assert [h.image_id for h in result.hits[k:]] == first[k:8]  # the rest keep the first stage's order
    ids, types, mask = encode_texts(load_tokenizer(), [QUERY], SearchRun.max_text_length)
    images = ImageInputs(*regions(FeatureStore(task_world / "features.lmdb"), [h.image_id for h in reranked]))
    expected = score_matrix(model, TextInputs(ids, types, mask), images)[0]
    assert [h.rerank_score for h in reranked] == pytest.approx(expected.tolist(), abs=1e-5)
    assert [h.rerank_score for h in reranked] == sorted((h.rerank_score for h in reranked), reverse=True)
    assert all(h.rerank_score is None for h in result.hits[k:])
    assert (tmp_path / "hits.png").read_bytes()[:4] == b"\x89PNG"


def test_index_refuses_another_model_or_store(task_world, built, tmp_path, capsys):
    base, model, out = built
    save_pretrained(scrambled(seed=1), tmp_path / "other")
    assert search_cli.main(["--index", str(out), "--text", QUERY, "--checkpoint", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "was built from the model in" in err and "weights" in err
    # A copy of the store with one more image is another store.
    copy = tmp_path / "store"
    copy.mkdir()
    data = (task_world / "features.lmdb" / "data.mdb").read_bytes()
    (copy / "data.mdb").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert search_cli.main(["--index", str(out), "--text", QUERY, "--rerank-top", "3", "--features", str(copy)]) == 2
    assert "was built from the feature store" in capsys.readouterr().err
    # The same model re-saved with changed weights at the recorded path is refused too.
    moved = scrambled(seed=0)
    with torch.no_grad():
        moved.heads["contrastive"].logit_scale.add_(1.0)
    save_pretrained(moved, tmp_path / "moved")
    assert search_cli.main(["--index", str(out), "--text", QUERY, "--checkpoint", str(tmp_path / "moved")]) == 2
    assert "differs" in capsys.readouterr().err


def test_index_is_written_atomically_and_damage_is_named(task_world, built, tmp_path, capsys):
    base, _, out = built
    target = tmp_path / "kept.index"
    target.write_bytes(out.read_bytes())
    save_pretrained(scrambled(dual=False), tmp_path / "no_dual")
    assert index_cli.main(["--checkpoint", str(tmp_path / "no_dual"), "--features", str(task_world / "features.lmdb"),
                           "--out", str(target), "--no-progress"]) == 2
    assert "no contrastive head" in capsys.readouterr().err
    assert target.read_bytes() == out.read_bytes()  # the failed build left the old index as it was
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))
    damaged = bytearray(out.read_bytes())
    damaged[-3] ^= 0xFF  # inside the embeddings
    (tmp_path / "damaged.index").write_bytes(bytes(damaged))
    assert search_cli.main(["--index", str(tmp_path / "damaged.index"), "--text", QUERY]) == 2
    assert "damaged" in capsys.readouterr().err
    assert search_cli.main(["--index", str(out), "--text", QUERY, "--top", "0"]) == 2
    assert "--top must be >= 1" in capsys.readouterr().err
