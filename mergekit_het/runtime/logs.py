"""Third-party chatter (transformers' "Loading weights" bars and warnings, datasets' "Generating
split" and map bars, huggingface_hub's "Writing model shards") silenced where we load models and
data, unless verbose output was asked for (`set_verbose(True)`, the CLI's `--verbose`).

```python
with quiet_third_party():
    model = AutoModel.from_pretrained(path)
```
Our own progress bars (tqdm) are not affected. Inside the block the libraries log errors only;
their previous settings are restored on exit.

`no_progress_bars()` (the CLI's `--quiet`) turns off every tqdm bar of the block, ours and the
libraries': tqdm has no run-time switch (its TQDM_DISABLE variable is read when tqdm is imported,
which the command modules already did), so the block makes `tqdm.__init__` pass disable=True
and restores it on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_verbose = False


def set_verbose(verbose: bool) -> None:
    """Let third-party logs and progress bars through (True) or silence them in loaders (False)."""
    global _verbose
    _verbose = bool(verbose)


def is_verbose() -> bool:
    return _verbose


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """transformers, datasets and huggingface_hub at error level, without progress bars, for the
    block (a no-op when verbose)."""
    if _verbose:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as tf_logging
    from datasets.utils import logging as ds_logging
    from huggingface_hub.utils import logging as hub_logging

    saved = (tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled(), ds_logging.get_verbosity(),
             datasets.is_progress_bar_enabled(), hub.are_progress_bars_disabled(), hub_logging.get_verbosity())  # fmt: skip
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    ds_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    hub.disable_progress_bars()
    hub_logging.set_verbosity_error()  # e.g. its "Retrying in 1s" lines while a Hub id is unreachable
    try:
        yield
    finally:
        tf_logging.set_verbosity(saved[0])
        if saved[1]:
            tf_logging.enable_progress_bar()
        ds_logging.set_verbosity(saved[2])
        if saved[3]:
            datasets.enable_progress_bars()
        if not saved[4]:
            hub.enable_progress_bars()
        hub_logging.set_verbosity(saved[5])


@contextmanager
def no_progress_bars(active: bool = True) -> Iterator[None]:
    """No tqdm progress bar is shown inside the block (a no-op when not `active`)."""
    if not active:
        yield
        return
    from tqdm import std

    init = std.tqdm.__init__

    def disabled(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    std.tqdm.__init__ = disabled
    try:
        yield
    finally:
        std.tqdm.__init__ = init
