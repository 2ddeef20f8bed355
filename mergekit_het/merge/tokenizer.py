"""Tokenizer merging as mergekit 0.1.5 does it: the output vocabulary and each model's token map.

Configuration (mergekit's keys): `tokenizer_source: base | union | MODEL` (our `model:MODEL` is the
same), or the block `tokenizer: {source (default union), tokens: {TOKEN: {source, force}},
pad_to_multiple_of}` (not both), and `chat_template` (a built-in name, `auto`, or a Jinja string).

`build_vocabulary` loads every model's tokenizer from its local folder and builds:
- the output tokenizer: `base` = the base model's (the base model, else the first model);
  `MODEL` = that model's; `union` = the base's plus, in model order (base first, then the
  config's order) and by increasing id, every regular token it lacks, then every added token (the
  first setting of a token wins). mergekit iterates hash-ordered sets there, so its ids of new
  tokens vary between runs; ours do not (compare by token string). Tokens named under `tokens`
  that the output lacks are appended.
- `perms[ref][new_id]` = the model's id of that token, or -1 when it lacks it (or its id is
  beyond the model's config `vocab_size`).
- `defaults[new_id]`, the row used by models that lack a token (by every model when forced):
  the configured `source` (a model's own row of the token; `{kind: model_token, model, token |
  token_id}`: that row of the model's original matrix; `{kind: zero}`), else, automatically:
  present in one model → its row; in none → zero (warned); the base has it → the base's row;
  else the mean of the rows of the models that have it. A configured token without a `source`
  gets the automatic rule (mergekit 0.1.5 fails there). Rows are assembled in `embeddings.py`.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..io.paths import read_member_json
from ..runtime.yaml_config import StrictModel
from .chat_templates import CHAT_TEMPLATES
from .side_files import TOKENIZER_FILES, model_dir


class ModelToken(StrictModel):
    kind: Literal["model_token"]
    model: str
    token: str | None = None
    token_id: int | None = Field(default=None, ge=0)

    @field_validator("model")
    @classmethod
    def _plain(cls, model: str) -> str:
        return model.removeprefix("model:")

    @model_validator(mode="after")
    def _one_of(self) -> "ModelToken":
        if (self.token is None) == (self.token_id is None):
            raise ValueError("give exactly one of token, token_id")
        return self


class ZeroToken(StrictModel):
    kind: Literal["zero"]


class TokenEmbedding(StrictModel):
    source: Union[ModelToken, ZeroToken, str, None] = None
    force: bool = False

    @field_validator("source")
    @classmethod
    def _plain(cls, source: Any) -> Any:
        return source.removeprefix("model:") if isinstance(source, str) else source


class TokenizerConfig(StrictModel):
    source: str = "union"
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = Field(default=None, ge=1)


Default = tuple  # ("own", ref) | ("row", ref, old_id) | ("zero",) | ("mean", refs)


def tokenizer_source(cfg: Any) -> str | None:
    """The configured output vocabulary ('base', 'union' or a model reference), or None."""
    source = cfg.tokenizer.source if cfg.tokenizer is not None else cfg.tokenizer_source
    return source.removeprefix("model:") if source is not None else None


def tokenizer_problems(cfg: Any) -> list[str]:
    """Problems with `tokenizer_source`, `tokenizer` and `chat_template` (no file read)."""
    problems = []
    if cfg.tokenizer is not None and cfg.tokenizer_source is not None:
        problems.append("give either tokenizer_source or tokenizer, not both")
    refs = cfg.referenced_models()
    source = tokenizer_source(cfg)
    where = "tokenizer.source" if cfg.tokenizer is not None else "tokenizer_source"
    if source not in (None, "base", "union") and source not in refs:
        problems.append(f"{where} '{source}' must be 'base', 'union' or one of the models ({', '.join(refs)})")
    for token, spec in ((cfg.tokenizer.tokens or {}) if cfg.tokenizer else {}).items():
        model = spec.source.model if isinstance(spec.source, ModelToken) else spec.source
        if isinstance(model, str) and model not in refs:
            problems.append(f"tokenizer.tokens[{token!r}].source: '{model}' is not one of the models ({', '.join(refs)})")
    template = cfg.chat_template
    if template is not None and template != "auto" and template not in CHAT_TEMPLATES and (len(template) < 20 or "{" not in template):
        problems.append(
            f"chat_template {template[:40]!r} is neither a built-in name ({', '.join(CHAT_TEMPLATES)}, auto) nor a Jinja template"
        )
    return problems


@dataclass
class Vocabulary:
    """The output tokenizer and how every model's rows map onto it (see the module docstring)."""

    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    size: int  # rows of the output embedding (len(vocab) padded up to pad_to_multiple_of)
    ids: dict[str, int]  # the output vocabulary
    perms: dict[str, list[int]]
    specs: dict[str, TokenEmbedding] = field(default_factory=dict)  # the configured tokens
    originals: dict[str, dict[str, int]] = field(default_factory=dict)  # each model's own vocabulary
    base: str | None = None
    _cache: dict[tuple, dict[int, Default]] = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def forced(self) -> set[int]:
        return {self.ids[t] for t, spec in self.specs.items() if spec.force}

    def defaults(self, refs: tuple[str, ...], base: str | None) -> dict[int, Default]:
        """Each output id's row for those of `refs` (the models one tensor is merged from) that
        lack the token (for all of them when forced); `base` is the base model, if among them."""
        key = (refs, base)
        if key not in self._cache:
            self._cache[key] = _defaults(self.ids, {r: self.perms[r] for r in refs}, self.specs, self.originals, base)
        return self._cache[key]


def _load_tokenizer(ref: str) -> Any:
    from transformers import AutoTokenizer

    folder = model_dir(ref)
    if folder is None or not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{ref}: no tokenizer files to merge vocabularies from")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for broken tokenizer files
        raise ConfigError(f"{ref}: its tokenizer cannot be loaded ({type(exc).__name__}: {str(exc)[:120]})") from None


def _vocab_size(ref: str, tokenizer: Any) -> int:
    """The model's embedding rows by its config (`vocab_size`, also under `text_config`), else
    the tokenizer's length."""
    folder = model_dir(ref)
    cfg = (read_member_json(folder, "config.json") if folder else None) or {}
    cfg = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    size = cfg.get("vocab_size")
    return size if type(size) is int and size > 0 else len(tokenizer)


def _stripped(tokenizer: Any, size: int, ref: str) -> Any:
    """The base tokenizer without its tokens of id >= the model's `vocab_size` (no embedding row),
    as mergekit does: only for a fast BPE tokenizer, whose merges using or making them are dropped too."""
    unused = {t for t, i in tokenizer.get_vocab().items() if i >= size}
    if not unused:
        return tokenizer
    state = json.loads(tokenizer.backend_tokenizer.to_str()) if tokenizer.is_fast else {}
    kind = state.get("model", {}).get("type", "slow")
    if kind != "BPE":
        raise ConfigError(f"{ref}: its {kind} tokenizer has {len(unused)} token(s) beyond vocab_size {size}; "
                          "only a fast BPE tokenizer can be stripped of them for tokenizer merging")  # fmt: skip
    from tokenizers import Tokenizer

    state["added_tokens"] = [e for e in state["added_tokens"] if e["id"] < size]
    state["model"]["vocab"] = {t: i for t, i in state["model"]["vocab"].items() if t not in unused}
    pairs = [m.split(" ") if isinstance(m, str) else m for m in state["model"]["merges"]]
    keep = [not unused.intersection([*pair, "".join(pair)]) for pair in pairs]  # mergekit keeps a merge making one: a load error
    state["model"]["merges"] = [m for m, k in zip(state["model"]["merges"], keep) if k]
    out = copy.deepcopy(tokenizer)
    out._tokenizer = Tokenizer.from_str(json.dumps(state))
    return out


def _union(base: Any, tokenizers: dict[str, Any], sizes: dict[str, int]) -> Any:
    """The base tokenizer (a fresh copy) plus every other model's regular tokens it lacks, then
    every added token, in model order and by increasing id."""
    regular: dict[str, None] = {}
    added: dict[str, Any] = {}
    for ref, tok in tokenizers.items():
        specials = {info.content for info in tok.added_tokens_decoder.values()}
        for token, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if idx < sizes[ref] and token not in specials:
                regular.setdefault(token)
        for idx, info in sorted(tok.added_tokens_decoder.items()):
            if idx >= sizes[ref]:
                continue
            if info.content in added and added[info.content] != info:
                warnings.warn(f"token {info.content!r} is added with different settings in {ref}; the first is kept", stacklevel=3)
            added.setdefault(info.content, info)
    out = copy.deepcopy(base)
    have = base.get_vocab()
    out.add_tokens([t for t in regular if t not in have and t not in added])
    for info in added.values():
        out.add_tokens(info)
    return out


def build_vocabulary(cfg: Any, base_ref: str, models: list[str]) -> Vocabulary:
    """Load the tokenizers of the donor `base_ref` and of `models` (the merged sources) and
    build the output vocabulary, the permutations and the default rows (module docstring)."""
    refs = [base_ref] + [r for r in models if r != base_ref]
    tokenizers = {base_ref: _load_tokenizer(base_ref)}
    for ref in refs[1:]:
        try:
            tokenizers[ref] = _load_tokenizer(ref)
        except ConfigError as exc:
            warnings.warn(f"{exc}; assuming the vocabulary of {base_ref}", stacklevel=2)
    sizes = {ref: _vocab_size(ref, tokenizers.get(ref, tokenizers[base_ref])) for ref in refs}
    tokenizers[base_ref] = _stripped(tokenizers[base_ref], sizes[base_ref], base_ref)
    source = tokenizer_source(cfg)
    if source == "union":
        out = _union(tokenizers[base_ref], tokenizers, sizes)
    else:
        out = copy.deepcopy(tokenizers[base_ref]) if source == "base" else _load_tokenizer(source)
    specs = (cfg.tokenizer.tokens or {}) if cfg.tokenizer is not None else {}
    missing = [t for t in specs if t not in out.get_vocab()]
    if missing:
        out.add_tokens(missing)
    vocab = out.get_vocab()
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ConfigError(f"tokenizer_source {source}: the output vocabulary's ids are not 0..{len(vocab) - 1}")
    perms = {}
    for ref in models:
        own = tokenizers.get(ref, tokenizers[base_ref]).get_vocab()
        perm = [-1] * len(vocab)
        for token, new in vocab.items():
            old = own.get(token, -1)
            perm[new] = old if old < sizes[ref] else -1
        perms[ref] = perm
    originals = {ref: tokenizers.get(ref, tokenizers[base_ref]).get_vocab() for ref in models}
    multiple = cfg.tokenizer.pad_to_multiple_of if cfg.tokenizer is not None else None
    size = -(-len(vocab) // multiple) * multiple if multiple else len(vocab)
    return Vocabulary(out, size, vocab, perms, dict(specs), originals, cfg.base_model)


def _defaults(vocab: dict[str, int], perms: dict[str, list[int]], specs: dict[str, TokenEmbedding],
              originals: dict[str, dict[str, int]], base: str | None) -> dict[int, Default]:  # fmt: skip
    """See `Vocabulary.defaults`."""
    defaults: dict[int, Default] = {}
    forced = {vocab[t] for t, spec in specs.items() if spec.force}
    for token, new in vocab.items():
        present = [ref for ref, perm in perms.items() if perm[new] >= 0]
        if len(present) == len(perms) and new not in forced:
            continue
        spec = specs.get(token)
        source = spec.source if spec is not None else None
        if isinstance(source, ZeroToken):
            defaults[new] = ("zero",)
        elif isinstance(source, (ModelToken, str)) and (source.model if isinstance(source, ModelToken) else source) not in perms:
            raise ConfigError(f"tokenizer.tokens[{token!r}].source: that model is not among the models this tensor is merged from")
        elif isinstance(source, ModelToken):
            old = source.token_id if source.token_id is not None else originals[source.model].get(source.token, -1)
            if old < 0:
                raise ConfigError(f"tokenizer.tokens[{token!r}]: {source.model} has no token {source.token!r}")
            defaults[new] = ("row", source.model, old)
        elif isinstance(source, str):
            if perms[source][new] < 0:
                raise ConfigError(f"tokenizer.tokens[{token!r}]: {source} has no such token to take its row from")
            defaults[new] = ("own", source)
        elif len(present) == 1:
            defaults[new] = ("own", present[0])
        elif not present:
            warnings.warn(f"token {token!r} is in no model; its embedding rows are zero", stacklevel=3)
            defaults[new] = ("zero",)
        elif base in present:
            defaults[new] = ("own", base)
        else:
            defaults[new] = ("mean", tuple(present))
    return defaults


def resolve_chat_template(cfg: Any) -> str | None:
    """The Jinja text of `chat_template`: a built-in name, `auto` (the most common template
    among the models' tokenizers, first seen on ties), or the literal template."""
    template = cfg.chat_template
    if template == "auto":
        seen = []
        for ref in cfg.referenced_models():
            try:
                found = _load_tokenizer(ref).chat_template
            except ConfigError:
                found = None
            if isinstance(found, str) and found.strip():
                seen.append(found.strip())
        return max(dict.fromkeys(seen), key=seen.count) if seen else None
    return CHAT_TEMPLATES.get(template, template) if template is not None else None


def write_tokenizer(vocab: Vocabulary | None, cfg: Any, folder: Path, donor: str, copy_tokenizer: bool = True) -> None:
    """The output's tokenizer files: the merged tokenizer (and `vocab_size` = its padded size in
    `config.json`); without one, the donor's copied files re-saved with `chat_template` if set."""
    if vocab is None:
        if cfg.chat_template is None:
            return
        if not copy_tokenizer:
            warnings.warn("chat_template is set but --no-copy-tokenizer writes no tokenizer; the template is not saved", stacklevel=2)
            return
        try:
            tokenizer = _load_tokenizer(donor)
        except ConfigError as exc:  # the merge itself is done: say so and keep it, as mergekit does
            warnings.warn(f"{exc}; the chat template is not saved", stacklevel=2)
            return
        save_tokenizer(tokenizer, cfg, folder)
        return
    save_tokenizer(vocab.tokenizer, cfg, folder)
    config = read_member_json(folder, "config.json") if (folder / "config.json").is_file() else None
    if config is not None:
        section = config["text_config"] if isinstance(config.get("text_config"), dict) and "vocab_size" in config["text_config"] else config
        section["vocab_size"] = vocab.size
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_tokenizer(tokenizer: Any, cfg: Any, folder: Path) -> None:
    """Write `tokenizer` (with the config's chat template) into `folder`, replacing any copied
    tokenizer files so that no stale vocabulary file stays beside the new one."""
    template = resolve_chat_template(cfg)
    if template is not None:
        tokenizer.chat_template = template
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(str(folder))
