"""Time the exact routes to a thin SVD / polar factor on one device, for the matrix shapes of the
1.1B Llama preset: which one the spectral merges (TSV-M, Iso-C, Iso-CTS) should take there.

    python bench/svd_routes.py --device cuda [--repeat 5]

Routes, each on a float32 matrix A (m × n): `torch.linalg.svd(full_matrices=False)` with each
cuSOLVER driver (None, gesvd, gesvdj, gesvda on CUDA; the default on CPU), a batch of 4 such
matrices in one call, QR first (A = QR, SVD of the n × n R, U = Q·U_R; for tall A), and the
eigendecomposition of the small side's Gram matrix (AᵀA or AAᵀ, `torch.linalg.eigh`) in float32
and float64. Prints the median time per matrix and, for each route, the largest |Δ| of its
reconstruction U·diag(S)·Vᵀ from A relative to max |A| (the routes' accuracy, not only speed).
On CUDA also: the float64 Gram eigh with MAGMA as torch's linear-algebra backend
(`torch.backends.cuda.preferred_linalg_library("magma")`), and concurrency: `--concurrent N`
eigendecompositions of N different float64 Grams (n × n of the shape's small side), one after
the other on one stream against N threads each on its own CUDA stream, ms per matrix (cuSOLVER's
`syevd` at n = 2048 is launch- and sync-bound, far from the GPU's FLOP rate).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from contextlib import contextmanager

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def svd(driver: str | None):
    def run(a: torch.Tensor):
        return torch.linalg.svd(a, full_matrices=False, driver=driver) if a.is_cuda else torch.linalg.svd(a, full_matrices=False)
    return run


def qr_svd(a: torch.Tensor):
    tall = a.shape[0] >= a.shape[1]
    x = a if tall else a.mT
    q, r = torch.linalg.qr(x)
    ur, s, vh = torch.linalg.svd(r, full_matrices=False)
    u = q @ ur
    return (u, s, vh) if tall else (vh.mT, s, u.mT)


def gram_eigh(dtype: torch.dtype):
    def run(a: torch.Tensor):
        x = a.to(dtype)
        wide = x.shape[0] <= x.shape[1]
        g = x @ x.mT if wide else x.mT @ x
        w, q = torch.linalg.eigh(g)
        w, q = w.flip(-1), q.flip(-1)
        s = w.clamp_min(0).sqrt()
        inv = torch.where(s > s[..., :1] * 1e-6, 1 / s, torch.zeros_like(s))
        if wide:
            u, vh = q, (q.mT @ x) * inv[..., :, None]
        else:
            vh, u = q.mT, (x @ q) * inv[..., None, :]
        return u.float(), s.float(), vh.float()
    return run


def magma(fn):
    def run(a: torch.Tensor):
        with linalg_library("magma"):
            return fn(a)
    return run


@contextmanager
def linalg_library(name: str):
    before = torch.backends.cuda.preferred_linalg_library()
    torch.backends.cuda.preferred_linalg_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_linalg_library(before)


def concurrent_eigh(grams: list[torch.Tensor], streams: list[torch.cuda.Stream] | None) -> None:
    """eigh of every Gram: one after the other on the current stream (streams None), or one
    thread per Gram, each on its own stream."""
    if streams is None:
        for g in grams:
            torch.linalg.eigh(g)
        return

    def one(g: torch.Tensor, st: torch.cuda.Stream) -> None:
        with torch.cuda.stream(st):
            torch.linalg.eigh(g)
        st.synchronize()

    threads = [threading.Thread(target=one, args=(g, st)) for g, st in zip(grams, streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def concurrency(n: int, counts: list[int], repeat: int, device: torch.device) -> None:
    g = torch.Generator(device="cpu").manual_seed(1)
    print(f"\n| eigh of float64 {n}×{n} Grams | one stream, ms per matrix | one thread + stream each, ms per matrix | speed-up |")
    print("|---|---:|---:|---:|")
    for c in counts:
        grams = []
        for _ in range(c):
            x = torch.randn(n, n, generator=g, dtype=torch.float64).to(device) * 0.01
            grams.append(x.T @ x)
        streams = [torch.cuda.Stream(device) for _ in range(c)]
        times = {}
        for mode, st in (("serial", None), ("streams", streams)):
            concurrent_eigh(grams, st)  # warm-up (per-thread cuSOLVER handles)
            torch.cuda.synchronize(device)
            ts = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                concurrent_eigh(grams, st)
                torch.cuda.synchronize(device)
                ts.append(time.perf_counter() - t0)
            times[mode] = statistics.median(ts) / c
        print(f"| {c} | {times['serial'] * 1e3:.1f} | {times['streams'] * 1e3:.1f} | {times['serial'] / times['streams']:.2f} |", flush=True)


def timed(fn, a: torch.Tensor, repeat: int, device: torch.device) -> tuple[float, float]:
    out = fn(a)  # warm-up (cuSOLVER handles, workspaces)
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(a)
        _sync(device)
        times.append(time.perf_counter() - t0)
    u, s, vh = out
    err = ((u * s[..., None, :]) @ vh - a).abs().max() / a.abs().max()
    return statistics.median(times), float(err)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shapes", default="2048x2048,5632x2048,2048x5632,256x2048")
    ap.add_argument("--concurrent", default="1,2,3,4,6", help="CUDA: thread counts of the concurrency table")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    routes = {"svd default": svd(None)}
    if device.type == "cuda":
        routes |= {f"svd {d}": svd(d) for d in ("gesvd", "gesvdj", "gesvda")}
    routes |= {"qr + svd": qr_svd, "gram eigh fp32": gram_eigh(torch.float32), "gram eigh fp64": gram_eigh(torch.float64)}
    if device.type == "cuda":
        routes["gram eigh fp64, magma"] = magma(gram_eigh(torch.float64))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), torch {torch.__version__}")
    print("| shape | route | ms per matrix | batch of 4, ms per matrix | max rel. reconstruction error |")
    print("|---|---|---:|---:|---:|")
    g = torch.Generator(device="cpu").manual_seed(0)
    for shape in args.shapes.split(","):
        m, n = (int(x) for x in shape.split("x"))
        # task-vector-like spectrum: decaying singular values
        a = (torch.randn(m, n, generator=g) * 0.01).to(device)
        for name, fn in routes.items():
            try:
                t, err = timed(fn, a, args.repeat, device)
                tb, _ = timed(fn, a.expand(4, m, n).contiguous(), max(1, args.repeat // 2), device)
                print(f"| {m}×{n} | {name} | {t * 1e3:.1f} | {tb / 4 * 1e3:.1f} | {err:.1e} |", flush=True)
            except (RuntimeError, torch.linalg.LinAlgError) as exc:
                print(f"| {m}×{n} | {name} | failed: {str(exc).splitlines()[0][:60]} | | |", flush=True)
    if device.type == "cuda":
        sides = sorted({min(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")}, reverse=True)
        for n in sides:
            concurrency(n, [int(c) for c in args.concurrent.split(",")], args.repeat, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
