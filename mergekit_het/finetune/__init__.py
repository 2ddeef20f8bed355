"""Fine-tuning experts (dense, undertrained, TaLoS sparse, LoRA) for merging; see docs/finetune.md."""

from .config import FinetuneConfig, load_finetune_config
from .recipe import FinetuneRecipe, finetune

__all__ = ["FinetuneConfig", "FinetuneRecipe", "finetune", "load_finetune_config"]
