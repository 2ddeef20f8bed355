"""Who trains a round's clients: the server process itself (`LocalTrainer`, one device) or one
worker process per device (`WorkerPool`, e.g. one per GPU), behind one interface:

```python
with make_trainer(cfg, strategy, model, data, device) as trainer:
    updates = trainer.train(strategy.configure(rnd, x))    # sorted by client id
```
Both run the strategy's `client_update` for each client (a worker builds its own strategy
object from the config), and client k's batch order and dropout in round t are seeded by
(seed, t, k) (`strategy.client_seed`), so the updates do not depend on which process or how many
processes trained them: the pool's round equals the sequential round (bit for bit on CPU with
equal thread counts; on GPUs up to the kernels' own nondeterminism). Workers are started with
`spawn` (CUDA cannot be forked); each builds the model once from the server's full state dict
and receives per round only the `RoundTask`: the global trainable state and what the strategy
sends with it, e.g. GHBM's momentum (shared memory).
"""

from __future__ import annotations

import os
import queue
import traceback
from typing import Any

import torch
import torch.multiprocessing as mp

from ..errors import MergekitHetError
from ..models.classifier import build_classifier
from ..runtime.device import resolve_device
from .config import FederatedConfig
from .strategy import ClientUpdate, FedAvg, RoundTask, build_strategy

State = dict[str, torch.Tensor]
POLL_SECONDS = 5.0


def train_clients(strategy: FedAvg, model: torch.nn.Module, data, task: RoundTask, device: torch.device) -> list[ClientUpdate]:
    """Train each of `task.clients` from x^t in turn on `device` (model already there)."""
    return [strategy.client_update(model, data.client_rows(k), data.tokenizer, task, k, device) for k in task.clients]


class LocalTrainer:
    """Clients trained one after another in this process, on the server's model and device."""

    def __init__(self, strategy: FedAvg, model: torch.nn.Module, data, device: torch.device) -> None:
        self.strategy, self.model, self.data, self.device = strategy, model, data, device

    def train(self, task: RoundTask) -> list[ClientUpdate]:
        return train_clients(self.strategy, self.model, self.data, task, self.device)

    def __enter__(self) -> LocalTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _worker(cfg_json: str, device: str, threads: int, data, full_state: State, trainable: list[str], inq, outq) -> None:
    """Worker main: build the model once, then train the clients of each received RoundTask."""
    try:
        torch.set_num_threads(threads)
        cfg = FederatedConfig.model_validate_json(cfg_json)
        dev = resolve_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        model = build_classifier(cfg.model, cfg.protocol, data.num_labels, cfg.seed, data.tokenizer.pad_token_id,
                                 cfg.head_temperature)  # fmt: skip
        model.load_state_dict(full_state)
        names = set(trainable)
        for name, p in model.named_parameters():
            p.requires_grad_(name in names)
        model.to(dev)
        strategy = build_strategy(cfg, dev)
        outq.put(("ready", None))
        for task in iter(inq.get, None):
            outq.put(("ok", train_clients(strategy, model, data, task, dev)))
    except Exception:  # noqa: BLE001 -- any failure is reported to the server, which raises
        outq.put(("error", traceback.format_exc()))


class WorkerPool:
    """One spawned worker per entry of `devices`; a round's sorted clients are dealt
    round-robin (worker i gets clients[i::n]) and the updates come back sorted by client id."""

    def __init__(self, cfg: FederatedConfig, model: torch.nn.Module, data, devices: list[str]) -> None:
        ctx = mp.get_context("spawn")
        cpu_workers = sum(1 for d in devices if not d.startswith("cuda") and d != "auto")
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))
        full = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.devices = devices
        self.inqs = [ctx.Queue() for _ in devices]
        self.outqs = [ctx.Queue() for _ in devices]
        self.procs = [
            ctx.Process(target=_worker, args=(cfg.model_dump_json(), d, threads, data, full, trainable, iq, oq), daemon=True)
            for d, iq, oq in zip(devices, self.inqs, self.outqs)
        ]
        for p in self.procs:
            p.start()
        for i in range(len(devices)):
            self._get(i)  # "ready" (or the worker's error)

    def _get(self, i: int) -> Any:
        while True:
            try:
                status, payload = self.outqs[i].get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self.procs[i].is_alive():
                    raise MergekitHetError(
                        f"client worker {i} on {self.devices[i]} died (exit code {self.procs[i].exitcode})"
                    ) from None
                continue
            if status == "error":
                last = payload.strip().splitlines()[-1]
                raise MergekitHetError(f"client worker {i} on {self.devices[i]} failed: {last}\n{payload}")
            return payload

    def train(self, task: RoundTask) -> list[ClientUpdate]:
        n = len(self.procs)
        for i in range(n):
            self.inqs[i].put(task.for_clients(task.clients[i::n]))
        updates = [u for i in range(n) for u in self._get(i)]
        order = {k: j for j, k in enumerate(task.clients)}
        return sorted(updates, key=lambda u: order[u.client])

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for q, p in zip(self.inqs, self.procs):
            if p.is_alive():
                q.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def make_trainer(
    cfg: FederatedConfig, strategy: FedAvg, model: torch.nn.Module, data, device: torch.device
) -> LocalTrainer | WorkerPool:
    """A worker pool when `cfg.client_devices` names devices, else the in-process trainer."""
    if cfg.client_devices:
        for d in cfg.client_devices:
            resolve_device(d, "client_devices")
        return WorkerPool(cfg, model, data, cfg.client_devices)
    return LocalTrainer(strategy, model, data, device)
