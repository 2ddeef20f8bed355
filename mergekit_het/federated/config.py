"""Federated-learning configuration: YAML plus `key.sub=value` overrides, validated by pydantic.

```yaml
model: /path/to/all-MiniLM-L6-v2        # local folder or Hub id
protocol: pooled_head                   # pooled_head (encoder + mean pool + Linear) | classifier
data: {task_file: eval/tasks/text_tasks.yaml, task: austen_book, max_length: 64,
       max_train_examples: 4000, max_eval_examples: 500}
partition: {scheme: dirichlet, num_clients: 20, alpha: 0.1}
rounds: 30
clients_per_round: 2
client: {lr: 0.05, batch_size: 16, local_steps: 10, prox_mu: 0.0}
server: {lr: 1.0, momentum: 0.0}         # FedAvg; momentum 0.9 = FedAvgM
aggregate: {method: linear}              # any registered merge method; weight = client example count
ghbm: {beta: 0.9, tau: 10}               # optional: Generalized Heavy-Ball Momentum
fed3r: {init: true}                      # optional: closed-form ridge head before fine-tuning
device: cuda                             # optional; client_devices: [cuda:0, cuda:1] trains clients in parallel
output: {dir: runs/fed/austen_fedavg}
```
Everything is checked here, before any weight is read: the merge method exists and its
parameters bind to its schema (`merge.binder`), the partition can be built, clients per round fit the population.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..runtime.yaml_config import StrictModel, load_config
from ..runtime.aggregation import AggregateConfig, check_aggregate
from ..runtime.device import device_spec_problem


class DataConfig(StrictModel):
    task_file: Path
    task: str
    max_length: int = Field(128, ge=2)
    max_train_examples: int | None = Field(None, ge=1)  # seeded random subset of train
    max_eval_examples: int | None = Field(None, ge=1)  # first examples of the eval split (fixed)
    eval_split: Literal["validation", "test"] = "test"
    extra_eval_splits: list[Literal["validation", "test"]] = []  # also scored (e.g. validation for selection)


class PartitionConfig(StrictModel):
    """How train examples are dealt to clients (see `federated.partition`)."""

    scheme: Literal["iid", "dirichlet", "pathological"] = "iid"
    num_clients: int = Field(10, ge=1)
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration (label skew; small = skewed)
    classes_per_client: int = Field(1, ge=1)  # pathological
    min_size: int = Field(1, ge=1)  # Dirichlet: resample until every client has this many


class ClientConfig(StrictModel):
    """Local training: plain SGD on the mean cross-entropy of each batch."""

    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    local_epochs: int = Field(1, ge=1)
    local_steps: int | None = Field(None, ge=1)  # if set, exactly this many steps (overrides epochs)
    prox_mu: float = Field(0.0, ge=0)  # FedProx: gradient += μ(w − w_global)


class ServerConfig(StrictModel):
    """Server optimizer on the aggregated pseudo-gradient (SGD; momentum > 0 is FedAvgM)."""

    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)


class GHBMConfig(StrictModel):
    """Generalized Heavy-Ball Momentum (Zaccone et al., arXiv:2311.18578)."""

    beta: float = Field(0.9, ge=0)
    tau: int = Field(..., ge=1)  # no default in the reference code; README uses τ = 1/C


class Fed3RConfig(StrictModel):
    """Fed3R (Fanì et al., ICML 2024, arXiv:2406.01116): ridge head from client statistics."""

    init: bool = True  # Fed3R+FT: logits / temperature while fine-tuning; False: the ridge head with logits / cfg.temperature
    lam: float = Field(0.01, ge=0)
    normalize: bool = True
    temperature: float = Field(0.1, gt=0)  # logits / T during fine-tuning and evaluation
    freeze_head: bool = False  # keep the Fed3R classifier fixed while fine-tuning


class OutputConfig(StrictModel):
    dir: Path
    overwrite: bool = False
    save_model: bool = True


# Keys a resume may change: where and how fast it runs, how long, how often it saves; not what
# it computes (a change to any other key is refused unless allow_config_change).
RESUME_FREE_KEYS = (
    "rounds", "device", "client_devices", "threads", "checkpoint_every", "eval_batch_size", "resume",
    "allow_config_change", "output.overwrite", "output.save_model",
)  # fmt: skip


class FederatedConfig(StrictModel):
    model: str
    protocol: Literal["pooled_head", "classifier"] = "pooled_head"
    data: DataConfig
    partition: PartitionConfig = PartitionConfig()
    rounds: int = Field(10, ge=0)  # 0 with fed3r: the closed-form classifier alone
    clients_per_round: int = Field(1, ge=1)
    client: ClientConfig = ClientConfig()
    server: ServerConfig = ServerConfig()
    aggregate: AggregateConfig = AggregateConfig()
    ghbm: GHBMConfig | None = None
    fed3r: Fed3RConfig | None = None
    temperature: float = Field(1.0, gt=0)  # logits / T without Fed3R
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    device: str = "cpu"  # where the in-process clients train and the global model is evaluated: cpu, cuda, cuda:1, auto
    client_devices: list[str] = []  # one worker process per entry trains the round's clients in parallel
    checkpoint_every: int = Field(1, ge=1)  # rounds between resumable round states
    resume: bool = True  # continue from the last completed round of an interrupted run
    allow_config_change: bool = False  # resume even if keys outside RESUME_FREE_KEYS changed
    output: OutputConfig

    @model_validator(mode="after")
    def _consistent(self) -> "FederatedConfig":
        if self.clients_per_round > self.partition.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) exceeds partition.num_clients "
                f"({self.partition.num_clients})"
            )
        if self.rounds == 0 and self.fed3r is None:
            raise ValueError("rounds: 0 only makes sense with fed3r (the closed-form classifier alone)")
        check_aggregate(self.aggregate, "aggregate")
        for where, dev in [("device", self.device), *(("client_devices", d) for d in self.client_devices)]:
            problem = device_spec_problem(dev)
            if problem is not None:
                raise ValueError(f"{where}: {problem}")
        if self.data.eval_split in self.data.extra_eval_splits:
            raise ValueError(f"data.extra_eval_splits repeats data.eval_split '{self.data.eval_split}'")
        return self

    @property
    def head_temperature(self) -> float:
        return self.fed3r.temperature if self.fed3r is not None and self.fed3r.init else self.temperature


def load_federated_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> FederatedConfig:
    return load_config(FederatedConfig, source, overrides)
