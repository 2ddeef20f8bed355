"""File names of a Hugging Face model folder, taken from `huggingface_hub.constants` (one place)."""

from huggingface_hub.constants import (
    CONFIG_NAME,  # config.json
    PYTORCH_WEIGHTS_NAME,  # pytorch_model.bin
    SAFETENSORS_INDEX_FILE,  # model.safetensors.index.json
    SAFETENSORS_SINGLE_FILE,  # model.safetensors
)

PYTORCH_INDEX_FILE = f"{PYTORCH_WEIGHTS_NAME}.index.json"  # the sharded-pickle index (hub has no constant)

__all__ = ["CONFIG_NAME", "PYTORCH_INDEX_FILE", "PYTORCH_WEIGHTS_NAME", "SAFETENSORS_INDEX_FILE", "SAFETENSORS_SINGLE_FILE"]
