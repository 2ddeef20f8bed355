"""Which tensors belong to which transformer layer, for the architectures `slices:` can stack.

A layer table maps an architecture (`config.json`'s `architectures[0]`, else its `model_type`)
to one family: the pattern of its layer tensors (the layer index is the one number group), the
pattern of the tensors that come before the layers (embeddings: mergekit's pre-weights, taken
from the first slice's sources) and of those after them (final norm, lm_head, pooler, heads:
post-weights, from the last slice's sources), and the config key holding the layer count.
A tensor that matches none of the three is an error naming it; so is an architecture not in the
table (mergekit guesses a layout there, and can silently write an empty model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TensorError
from ..io.paths import read_member_json


@dataclass(frozen=True)
class Family:
    """The tensor layout of a family of architectures (see the module docstring)."""

    name: str
    layer: re.Pattern[str]  # group 1: everything before the index, group 2: the index
    pre: re.Pattern[str]
    post: re.Pattern[str]
    layers_key: str = "num_hidden_layers"


_DECODER = Family(
    "decoder (Llama, Mistral, Qwen2/3, Gemma, Phi-3)",
    layer=re.compile(r"^(model\.layers\.)(\d+)\."),
    pre=re.compile(r"^model\.embed_tokens\."),
    post=re.compile(r"^(model\.norm\.|lm_head\.)"),
)
_ENCODER = Family(
    "BERT family",
    layer=re.compile(r"^((?:bert\.|roberta\.|electra\.)?encoder\.layer\.)(\d+)\."),
    pre=re.compile(r"^(?:bert\.|roberta\.|electra\.)?embeddings\."),
    post=re.compile(r"^((?:bert\.|roberta\.|electra\.)?pooler\.|cls\.|classifier\.|lm_head\.|qa_outputs\.)"),
)
FAMILIES: dict[str, Family] = {
    **{name: _DECODER for name in (
        "LlamaForCausalLM", "LLaMAForCausalLM", "LlamaModel", "MistralForCausalLM", "MistralModel",
        "Qwen2ForCausalLM", "Qwen2Model", "Qwen3ForCausalLM", "Qwen3Model", "GemmaForCausalLM", "GemmaModel",
        "Gemma2ForCausalLM", "Gemma2Model", "Phi3ForCausalLM", "Phi3Model",
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3",
    )},
    **{name: _ENCODER for name in (
        "BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
        "BertForQuestionAnswering", "RobertaModel", "RobertaForMaskedLM", "RobertaForSequenceClassification",
        "XLMRobertaModel", "XLMRobertaForMaskedLM", "XLMRobertaForSequenceClassification",
        "ElectraModel", "ElectraForSequenceClassification",
        "bert", "roberta", "xlm-roberta", "electra",
    )},
}  # fmt: skip


@dataclass(frozen=True)
class TensorRole:
    """What a tensor is: `kind` 'pre', 'post' or 'layer'; for a layer tensor its index and the
    text around the index (`at(i)` names the same tensor in layer i)."""

    kind: str
    index: int = -1
    prefix: str = ""
    suffix: str = ""

    def at(self, index: int) -> str:
        return f"{self.prefix}{index}{self.suffix}"


def family_of(folder: Path | None, label: str) -> Family:
    """The family of the model in `folder` (from its config.json), or one error line."""
    config = read_member_json(folder, "config.json") if folder is not None else None
    if config is None:
        raise TensorError(f"{label}: no config.json, so its architecture (and which tensors are layers) is unknown; slices need it")
    config = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    archs = config.get("architectures") or []
    for key in [*(a for a in archs if isinstance(a, str)), config.get("model_type")]:
        if isinstance(key, str) and key in FAMILIES:
            return FAMILIES[key]
    known = sorted(k for k in FAMILIES if k[0].isupper())
    name = archs[0] if archs else config.get("model_type")
    raise TensorError(f"{label}: architecture {name!r} has no layer table, so slices cannot tell its layers apart "
                      f"(known: {', '.join(known)})")  # fmt: skip


def role(family: Family, name: str, label: str) -> TensorRole:
    """The role of tensor `name` of model `label`; a tensor of no known role is an error."""
    m = family.layer.match(name)
    if m is not None:
        return TensorRole("layer", int(m.group(2)), m.group(1), name[m.end(2):])
    if family.pre.match(name):
        return TensorRole("pre")
    if family.post.match(name):
        return TensorRole("post")
    raise TensorError(f"{name}: tensor of {label} is neither a layer, an embedding nor a final tensor of the {family.name} "
                      "layout, so slices cannot place it")  # fmt: skip
