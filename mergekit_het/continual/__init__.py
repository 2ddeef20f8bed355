"""Continual learning over streams built from the task file: class-incremental splits and task
sequences, several seeded schedules per setting, one classifier over every class (scored
class- and task-incrementally), and the strategies sequential fine-tuning, EWC, replay,
merge-as-you-go (any registered merge method), SCROLL (online ridge + replay adaptation),
joint training and the one-client-per-round federated run.

```python
from mergekit_het.continual import load_continual_config, run_continual
suite = run_continual(load_continual_config("continual/configs/minilm_supersense_classes.yaml"))
suite.report["markdown"]     # the table: mean ± std over schedules
```
"""

from .config import ContinualConfig, load_continual_config
from .runner import RunResult, SuiteResult, run_continual

__all__ = ["ContinualConfig", "RunResult", "SuiteResult", "load_continual_config", "run_continual"]
