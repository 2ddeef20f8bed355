"""Hugging Face Hub: model cards for merges and experts (`card`), pushing folders (`upload`)."""
