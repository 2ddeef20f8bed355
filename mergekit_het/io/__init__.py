"""Lazy tensor sources and the sharded, atomic safetensors writer."""
