"""Fine-tuning experts (dense, undertrained, TaLoS sparse, LoRA) for merging; see docs/finetune.md."""

from .config import FinetuneConfig, load_finetune_config
from .loop import finetune

__all__ = ["FinetuneConfig", "finetune", "load_finetune_config"]
