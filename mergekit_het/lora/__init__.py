"""LoRA adapters produced by this project: extraction from a fine-tuned model and its base (`extract.py`).

Reading adapters as models (W₀ + B·A) lives in `mergekit_het.io.lora`."""
