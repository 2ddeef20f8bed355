"""Continual learning as repeated merging: each new experience's expert is merged into the
running model by the merge engine (sequential averaging, task arithmetic, TIES, ...), with
sequential fine-tuning + EWC and SCROLL's schedule-invariant online ridge as references.

```python
from mergekit_het.continual import load_continual_config, run_continual
result = run_continual(load_continual_config("continual/configs/minilm_austen_classes.yaml"))
result.matrix, result.summary   # R[i][j]; average_accuracy, forgetting, backward_transfer
```
"""

from .config import ContinualConfig, load_continual_config
from .runner import ContinualResult, run_continual

__all__ = ["ContinualConfig", "ContinualResult", "load_continual_config", "run_continual"]
