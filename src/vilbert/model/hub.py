"""Model directories as users of Hugging Face expect them: `ViLBert.from_pretrained(path or hub id)`,
`model.save_pretrained(dir)`, `model.push_to_hub(repo_id)`.

A directory holds config.json (the settings, `model_type` and the vilbert version that wrote it),
model.safetensors, checksums.json (the weights' checksum, verified on load), the tokenizer's files
(vocab.txt, tokenizer_config.json: bert-base-uncased WordPiece, lower case) and README.md, a model
card saying what the model is, which heads it has and, when given, what it was trained on and
scored. Hub ids are resolved with huggingface_hub (downloads happen only when a user asks for a
hub id; everything in this repository uses local directories).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file

from vilbert import __version__
from vilbert.core.assets import bundled_vocab_path
from vilbert.io.atomic import atomic_path, write_json
from vilbert.io.checksums import verify_checksums, write_checksums
from vilbert.io.tensors import read_safetensors
from vilbert.model.config import ViLBertConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
CARD_NAME = "README.md"
M = TypeVar("M", bound="HubMixin")


def resolve(path_or_id: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local model directory for `path_or_id`: itself when it is a directory, else the snapshot of
    the hub repository it names (downloaded by huggingface_hub, or found in its cache)."""
    path = Path(path_or_id)
    if path.is_dir() or path.exists() or str(path_or_id).count("/") != 1:
        return path
    from huggingface_hub import snapshot_download  # imported only when a hub id is asked for

    try:
        return Path(snapshot_download(str(path_or_id), revision=revision, cache_dir=cache_dir))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, no access: all "not found" to the user
        raise FileNotFoundError(f"{path_or_id} is neither a model directory here nor a hub repository that could be "
                                f"fetched ({type(err).__name__}: {err})") from err


class HubMixin:
    """`from_pretrained`, `save_pretrained` and `push_to_hub` for a module built from a ViLBertConfig."""

    config: ViLBertConfig

    @classmethod
    def from_pretrained(cls: type[M], path_or_id: str | Path, *, map_location: str | torch.device = "cpu",
                        revision: str | None = None, cache_dir: str | Path | None = None) -> M:
        """The model saved in a directory (or a hub repository), its weights loaded strictly."""
        directory = resolve(path_or_id, revision, cache_dir)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a saved ViLBERT model: {name} is missing")
        config = ViLBertConfig.from_json(directory / CONFIG_NAME)
        verify_checksums(directory, [WEIGHTS_NAME])  # directories saved before checksums existed pass
        model = cls(config)  # type: ignore[call-arg]
        state = read_safetensors(directory / WEIGHTS_NAME, map_location)
        try:
            result = model.load_state_dict(state, strict=False)  # type: ignore[attr-defined]
        except RuntimeError as err:  # a tensor of the wrong shape
            raise ValueError(f"weights in {directory / WEIGHTS_NAME} do not match its config: {err}") from err
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"weights in {directory / WEIGHTS_NAME} do not match its config: "
                             f"missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}")
        return model.to(map_location)  # type: ignore[attr-defined]

    def save_pretrained(self, directory: str | Path, *, trained_on: str | None = None,
                        metrics: dict[str, Any] | None = None) -> Path:
        """Write the directory described in the module docstring (each file atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        self.config.to_json(directory / CONFIG_NAME)
        # The weights only: config.json is meant to be read, and sometimes edited, by people.
        write_checksums(directory, [WEIGHTS_NAME])
        with atomic_path(directory / VOCAB_NAME) as tmp:
            shutil.copyfile(bundled_vocab_path(), tmp)
        write_json(directory / TOKENIZER_CONFIG, {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                                  "model_max_length": self.config.max_position_embeddings})
        write_model_card(directory, self.config, trained_on, metrics)
        return directory

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload ViLBERT model", trained_on: str | None = None,
                    metrics: dict[str, Any] | None = None) -> str:
        """Save the model to a temporary directory and upload it to the hub repository `repo_id`
        (created if needed); returns the commit's URL."""
        from huggingface_hub import HfApi  # imported only when a user pushes

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vilbert-push-") as tmp:
            self.save_pretrained(tmp, trained_on=trained_on, metrics=metrics)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        return str(getattr(info, "commit_url", info))


def write_model_card(directory: str | Path, config: ViLBertConfig, trained_on: str | None = None,
                     metrics: dict[str, Any] | None = None) -> Path:
    """README.md with the front matter the hub reads and what a user needs to know of the model."""
    directory = Path(directory)
    two = config.architecture == "two_stream"
    heads = ", ".join(f"`{name}`" for name in config.heads) or "none"
    answers = config.heads.get("vqa", {}).get("answers")
    lines = [
        "---", "library_name: vilbert", "tags: [vision-language, vilbert, vqa]", "---", "",
        f"# {'ViLBERT' if two else 'Single-stream baseline'} ({config.estimated_parameters() / 1e6:.0f}M parameters)",
        "",
        f"- Text stream: {config.num_hidden_layers} layers x {config.hidden_size}, {config.num_attention_heads} heads.",
        (f"- Visual stream: {config.v_num_hidden_layers} layers x {config.v_hidden_size} over {config.v_feature_size}-d "
         f"region features; {config.num_coattention_layers} co-attention layers.") if two else
        f"- One stream over {config.v_feature_size}-d region features and words.",
        f"- Heads: {heads}" + (f" (VQA names {len(answers)} answers)." if answers else "."),
        *([f"- Task tokens (12-in-1) for {', '.join(config.task_tokens)}: run the model inside "
           "`model.task_scope(name)`."] if config.task_tokens else []),
        f"- Saved by vilbert {__version__}.", "",
        "```python", "from vilbert import ViLBert", 'model = ViLBert.from_pretrained("this/directory")', "```", "",
    ]
    if trained_on:
        lines += ["## Trained on", "", trained_on, ""]
    if metrics:
        lines += ["## Metrics", "", "```json", json.dumps(metrics, indent=2), "```", ""]
    path = directory / CARD_NAME
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path
