"""Digest of merged outputs, to check that a refactor changes no bit of any merge.

    python bench/make_checkpoints.py --preset 70m --experts 3 --dtype bfloat16 --out CKPT
    python bench/output_digest.py CKPT --out before.json          # at the old commit
    python bench/output_digest.py CKPT --compare before.json      # at the new one: exit 1 on any change

For each method of bench/compare.py that is deterministic (linear, task arithmetic, TIES,
breadcrumbs), the checkpoints in CKPT (base + experts, as make_checkpoints.py writes them) are
merged with `mergekit-het merge` exactly as the speed benchmark does, in a fresh process, and the
SHA-256 of every output tensor's bytes is recorded (the file layout may change; the tensors may not).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import METHODS, merge_yaml  # noqa: E402


def tensor_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of each tensor's raw bytes (dtype and shape included) over every shard of `folder`."""
    out: dict[str, str] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name).contiguous()
                h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
                out[name] = h.hexdigest()
    return dict(sorted(out.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", type=Path, help="folder from bench/make_checkpoints.py (base, expert1, ...)")
    ap.add_argument("--methods", default="linear,task_arithmetic,ties,breadcrumbs")
    ap.add_argument("--out", type=Path, help="write the digests here (JSON)")
    ap.add_argument("--compare", type=Path, help="compare with digests written earlier; exit 1 on a difference")
    args = ap.parse_args()
    folders = [args.ckpt / "base", *sorted(p for p in args.ckpt.glob("expert*") if p.is_dir())]
    dtype = json.loads((args.ckpt / "spec.json").read_text())["dtype"]
    result: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            config = Path(tmp) / f"{name}.yml"
            config.write_text(yaml.safe_dump(merge_yaml(METHODS[name], folders, dtype, None)))
            out = Path(tmp) / name
            subprocess.run([sys.executable, "-m", "mergekit_het.cli", "merge", str(config), str(out),
                            "--no-copy-tokenizer", "--quiet"], check=True)
            result[name] = tensor_digests(out)
            print(f"{name}: {len(result[name])} tensors")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.compare:
        before = json.loads(args.compare.read_text())
        bad = 0
        for name, digests in result.items():
            diff = [k for k in digests.keys() | before.get(name, {}).keys() if digests.get(k) != before.get(name, {}).get(k)]
            bad += len(diff)
            print(f"{name}: {'identical' if not diff else f'{len(diff)} tensors differ, e.g. {sorted(diff)[:3]}'}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
