"""Build Llama-shaped random checkpoints for the merge benchmarks: one base and N experts.

    python bench/make_checkpoints.py --preset 270m --experts 3 --dtype bfloat16 \
        --out bench/_work/ckpt/270m-bfloat16-e3

Each model is a normal Hugging Face folder (config.json from `LlamaConfig`, sharded
`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`) that `from_pretrained`,
mergekit and mergekit-het all read. Tensor names and shapes come from a `LlamaForCausalLM`
built on the meta device, so nothing model-sized is ever allocated; the weights are written
shard by shard, all models at once (tensors drawn in parallel threads), so peak memory is about
(N+1) x one shard.

Weights (float32, then cast to --dtype):
    base     W0 ~ N(0, 0.02^2) for matrices, 1 + N(0, 0.02^2) for norm vectors
    expert e We = W0 + tau_e,   tau_e = N(0, dense_std^2) everywhere
                                        + N(0, spike_std^2) on a seeded random spike_frac of entries
The dense part is small and the spikes are large, so TIES' top-k trimming keeps mostly spikes
and the experts' independent signs make sign election matter. Every tensor has its own seed
(seed, model, tensor index), so the output does not depend on the shard layout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Shape:
    """Llama shape; `params` counts every tensor (untied lm_head)."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int

    @property
    def params(self) -> int:
        head_dim = self.hidden // self.heads
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        layer = attn + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return self.layers * layer + 2 * self.vocab * self.hidden + self.hidden


PRESETS: dict[str, Shape] = {
    "tiny": Shape(hidden=512, layers=4, intermediate=1408, vocab=16000, heads=8, kv_heads=2),  # 27.7M
    "70m": Shape(hidden=768, layers=6, intermediate=2048, vocab=16000, heads=12, kv_heads=4),  # 62.3M
    "270m": Shape(hidden=1024, layers=18, intermediate=2816, vocab=32000, heads=16, kv_heads=4),  # 268M
    "1b": Shape(hidden=2048, layers=22, intermediate=5632, vocab=32000, heads=32, kv_heads=4),  # 1.10B (TinyLlama 1.1B)
}


@dataclass(frozen=True)
class CheckpointSpec:
    """Everything that determines the bytes on disk (stored next to the models)."""

    shape: Shape
    experts: int = 3
    dtype: str = "bfloat16"
    seed: int = 0
    dense_std: float = 5e-4
    spike_std: float = 5e-3
    spike_frac: float = 0.05
    shard_size: str = "1GB"

    @property
    def model_names(self) -> list[str]:
        return ["base"] + [f"expert{e}" for e in range(1, self.experts + 1)]

    @property
    def bytes_per_model(self) -> int:
        return self.shape.params * DTYPES[self.dtype].itemsize


def llama_config(shape: Shape, dtype: str) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )


def _generator(seed: int, model: int, tensor: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + model) * 1_000_003 + tensor)


def _base_tensor(shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(shape, generator=gen).mul_(0.02)
    return w.add_(1.0) if len(shape) == 1 else w


def _task_vector(shape: torch.Size, spec: CheckpointSpec, gen: torch.Generator) -> torch.Tensor:
    tau = torch.randn(shape, generator=gen).mul_(spec.dense_std).view(-1)
    n_spikes = max(1, int(spec.spike_frac * tau.numel()))
    where = torch.randint(tau.numel(), (n_spikes,), generator=gen)
    tau.index_add_(0, where, torch.randn(n_spikes, generator=gen).mul_(spec.spike_std))
    return tau.view(shape)


def make_checkpoints(spec: CheckpointSpec, out: Path, *, overwrite: bool = False) -> list[Path]:
    """Write base + experts under `out/<name>/`; reuse them when `out/spec.json` matches."""
    out = Path(out)
    marker = out / "spec.json"
    folders = [out / name for name in spec.model_names]
    if marker.exists() and json.loads(marker.read_text()) == asdict(spec) and not overwrite:
        return folders
    if out.exists():
        if not (overwrite or marker.exists()):
            sys.exit(f"error: {out} exists and was not made by this script; pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True)

    cfg = llama_config(spec.shape, spec.dtype)
    with torch.device("meta"):
        meta = {k: v.to(DTYPES[spec.dtype]) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    index = {name: i for i, name in enumerate(meta)}
    plan = split_torch_state_dict_into_shards(meta, max_shard_size=spec.shard_size)
    for folder in folders:
        folder.mkdir()
        cfg.save_pretrained(folder)
        if plan.is_sharded:
            index_json = {"metadata": plan.metadata, "weight_map": plan.tensor_to_filename}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))

    dtype = DTYPES[spec.dtype]
    bar = tqdm(total=spec.bytes_per_model * len(folders), unit="B", unit_scale=True, desc="checkpoints")
    def model_tensors(name: str) -> list[torch.Tensor]:  # base, expert1, ... for one tensor name
        i, shape = index[name], meta[name].shape
        base = _base_tensor(shape, _generator(spec.seed, 0, i))
        out = [base.to(dtype)]
        for e in range(1, spec.experts + 1):
            out.append(_task_vector(shape, spec, _generator(spec.seed, e, i)).add_(base).to(dtype))
        bar.update(meta[name].nbytes * len(folders))
        return out

    # torch releases the GIL, so tensors are drawn in parallel; each has its own generator.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for filename, names in plan.filename_to_tensors.items():
            shards: list[dict[str, torch.Tensor]] = [{} for _ in folders]
            for name, tensors in zip(names, pool.map(model_tensors, names)):
                for shard, tensor in zip(shards, tensors):
                    shard[name] = tensor
            for folder, shard in zip(folders, shards):
                save_file(shard, folder / filename, metadata={"format": "pt"})
    bar.close()
    marker.write_text(json.dumps(asdict(spec), indent=2))
    return folders


def shape_from_args(args: argparse.Namespace) -> Shape:
    shape = PRESETS[args.preset]
    overrides = {k: getattr(args, k) for k in ("hidden", "layers", "intermediate", "vocab", "heads", "kv_heads")}
    return replace(shape, **{k: v for k, v in overrides.items() if v is not None})


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="270m",
                        help="model shape (default 270m: base+3 experts = 1.07B params)")
    for key in ("hidden", "layers", "intermediate", "vocab", "heads", "kv_heads"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"override the preset's {key}")
    parser.add_argument("--experts", type=int, default=3, help="number of experts besides the base (default 3)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", default="1GB", help="max input shard size (default 1GB)")


def spec_from_args(args: argparse.Namespace) -> CheckpointSpec:
    return CheckpointSpec(shape=shape_from_args(args), experts=args.experts, dtype=args.dtype,
                          seed=args.seed, shard_size=args.shard_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder to hold base/ expert1/ ...")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    spec = spec_from_args(args)
    folders = make_checkpoints(spec, args.out, overwrite=args.overwrite)
    gb = spec.bytes_per_model * len(folders) / 1e9
    print(f"{len(folders)} models x {spec.shape.params / 1e6:.1f}M params ({spec.dtype}, {gb:.2f} GB) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
