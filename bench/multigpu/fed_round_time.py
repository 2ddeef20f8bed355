"""Federated round time with the clients trained in one process (one GPU) vs one worker per GPU.

    python bench/multigpu/fed_round_time.py CONFIG OUT.json [key.sub=value ...]

Runs `run_federated` twice with the same config and seed: `device=cuda:0` with no workers
(clients one after another), then `client_devices=[cuda:0, ..., cuda:N-1]` (one spawned worker
per visible GPU). Writes the per-round client-training seconds of both, the speed-up (rounds
after the first, which pays CUDA and worker start-up), and how far apart the two global models
end (they are equal up to GPU kernel nondeterminism: same client seeds, same aggregation order).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from mergekit_het.federated import load_federated_config, run_federated


def main(config: str, out: str, overrides: list[str]) -> None:
    n = torch.cuda.device_count()
    devices = [f"cuda:{i}" for i in range(n)]
    res, hist = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("1gpu_sequential", ["client_devices=[]"]), (f"{n}gpu_parallel", [f"client_devices=[{','.join(devices)}]"])):
            cfg = load_federated_config(config, [*overrides, "device=cuda:0", *extra, f"output.dir={tmp}/{name}"])
            r = run_federated(cfg, progress=False)
            res[name], hist[name] = r.global_state, r.history
    secs = {k: [h["train_seconds"] for h in v[1:]] for k, v in hist.items()}
    mean = {k: sum(s[1:]) / max(len(s) - 1, 1) for k, s in secs.items()}
    a, b = res.values()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    rel = max(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in a)
    summary = {
        "gpus": n, "device_name": torch.cuda.get_device_name(0), "overrides": overrides,
        "round_train_seconds": secs, "mean_round_seconds_after_first": mean,
        "speedup": mean["1gpu_sequential"] / mean[f"{n}gpu_parallel"],
        "same_clients": [h.get("clients") for h in hist["1gpu_sequential"][1:]] == [h.get("clients") for h in hist[f"{n}gpu_parallel"][1:]],
        "max_abs_diff_global": diff, "max_rel_diff_global": rel,
        "accuracy": {k: v[-1].get("accuracy") for k, v in hist.items()},
    }  # fmt: skip
    Path(out).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
