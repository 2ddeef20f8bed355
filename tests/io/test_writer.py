"""ShardedWriter: every tensor shape it lays out can be written and reads back bit for bit."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from mergekit_het.io.writer import ShardedWriter


def test_writer_scalar_and_strided_size_one_tensors_read_back_exactly(tmp_path):
    scalar = torch.tensor(3.25, dtype=torch.float32)
    column = torch.randn(5, 7)[:, :1]  # shape (5, 1), row stride 7: contiguous() keeps an odd stride on the size-1 dim
    row = torch.randn(1, 6).to(torch.bfloat16).t()  # (6, 1) transposed view
    tensors = {"scalar": scalar, "column": column, "row": row}
    writer = ShardedWriter(tmp_path, [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], max_shard_size=1 << 30)
    for name, t in tensors.items():
        writer.write(name, t)
    writer.finish()
    writer.close()
    back = load_file(str(tmp_path / writer.files[0]))
    for name, t in tensors.items():
        assert back[name].shape == t.shape and back[name].dtype == t.dtype
        assert torch.equal(back[name], t), name
