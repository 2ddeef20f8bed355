"""Federated learning as repeated merging: local fine-tuning yields client models, the merge
engine aggregates them (`merge_state_dicts` with any registered method), a server optimizer
steps on the pseudo-gradient. FedAvg, FedAvgM, FedProx, GHBM and Fed3R(+FT); resumable.

```python
from mergekit_het.federated import load_federated_config, run_federated
history = run_federated(load_federated_config("federated/configs/minilm_austen.yaml"))
```
The Flower integration lives in `mergekit_het.federated.flower` (needs `pip install "mergekit-het[flower]"`).
"""

from .config import FederatedConfig, load_federated_config
from .runner import FederatedResult, run_federated

__all__ = ["FederatedConfig", "FederatedResult", "load_federated_config", "run_federated"]
