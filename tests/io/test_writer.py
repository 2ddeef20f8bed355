"""ShardedWriter and OutputFile: every tensor shape it lays out can be written, in any order and
pieces, and reads back bit for bit, through direct I/O and through buffered writes."""

from __future__ import annotations

import os
import random

import pytest
import torch
from safetensors.torch import load_file

from mergekit_het.io.writer import OutputFile, ShardedWriter, WriteBehind


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


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_output_file_pieces_in_any_order_give_exact_bytes(tmp_path, direct, seed):
    # pieces of random lengths (within one block, across blocks, several bounce buffers) in a random
    # order: the file holds exactly the bytes, whatever path (O_DIRECT or buffered) wrote it
    rng = random.Random(seed)
    size = rng.choice([1, 4095, 4096, 4097, 3 * 4096 + 17, (8 << 20) * 2 + 12345])
    data = bytes(rng.getrandbits(8) for _ in range(min(size, 1 << 16))) * (size // (1 << 16) + 1)
    data = data[:size]
    cuts = sorted({0, size, *(rng.randrange(size) for _ in range(rng.randrange(1, 12)))})
    pieces = list(zip(cuts, cuts[1:]))
    rng.shuffle(pieces)
    behind = WriteBehind() if direct else None
    f = OutputFile(tmp_path / "out.bin", size, behind)
    assert f.direct == (direct and _accepts_direct_io(tmp_path))
    for a, b in pieces:
        f.pwrite(memoryview(data)[a:b], a)
    if behind is not None:
        behind.flush()
        behind.close()
    f.close()
    assert (tmp_path / "out.bin").read_bytes() == data


def _accepts_direct_io(folder) -> bool:
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


def test_writer_through_direct_io_reads_back_many_tensors_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(int(torch.randint(1, 3000, (1,), generator=g)), generator=g).to(dtype)
               for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float16] * 5)}  # fmt: skip
    writer = ShardedWriter(tmp_path, [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], max_shard_size=20_000)
    for name in reversed(list(tensors)):  # out of file order, the large ones in two pieces
        t = tensors[name]
        half = t.numel() // 2
        writer.write(name, t[half:], half)
        writer.write(name, t[:half], 0)
    writer.finish()
    writer.close()
    back = {}
    for file in writer.files:
        back.update(load_file(str(tmp_path / file)))
    assert back.keys() == tensors.keys() and all(torch.equal(back[n], t) for n, t in tensors.items())


def test_output_file_failed_write_behind_is_raised_and_close_releases(tmp_path, monkeypatch):
    # a write on the disk thread fails: a later pwrite or flush raises it, close frees everything
    real, calls = os.pwrite, []

    def fails(*args):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real(*args)

    behind = WriteBehind()
    f = OutputFile(tmp_path / "out.bin", 40 << 20, behind)
    monkeypatch.setattr(os, "pwrite", fails)
    with pytest.raises(OSError, match="No space"):
        f.pwrite(memoryview(bytes(40 << 20)), 0)
        behind.flush()
    behind.close()
    f.close()
    assert f.fd is None


def test_writer_shards_share_one_write_behind_and_read_back(tmp_path):
    # many shards, one set of bounce buffers (memory does not grow with the shard count)
    g = torch.Generator().manual_seed(1)
    tensors = {f"t{i}": torch.randn(3000, generator=g) for i in range(12)}
    writer = ShardedWriter(tmp_path, [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], max_shard_size=25_000)
    assert len(writer.files) >= 6 and len({id(f._behind) for f in writer._files}) == 1
    for name, t in tensors.items():
        writer.write(name, t)
    writer.finish()
    writer.close()
    back = {}
    for file in writer.files:
        back.update(load_file(str(tmp_path / file)))
    assert all(torch.equal(back[n], t) for n, t in tensors.items())
