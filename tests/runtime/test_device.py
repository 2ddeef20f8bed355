"""runtime.device: names resolved once; bad names and missing GPUs give one line naming the option."""

import pytest
import torch

from mergekit_het.errors import ConfigError
from mergekit_het.runtime.device import parse_dtype, resolve_device


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:0", "cuda:", ""])
def test_resolve_device_bad_name_one_line_naming_option(spec):
    with pytest.raises(ConfigError) as err:
        resolve_device(spec, "--device")
    msg = str(err.value)
    assert msg.startswith(f"--device: '{spec}' is not a device") and "\n" not in msg


def test_resolve_device_missing_gpu_one_line():
    index = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=rf"^client_devices: device 'cuda:{index}' is not available"):
        resolve_device(f"cuda:{index}", "client_devices")


def test_parse_dtype_aliases_and_unknown():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float16") is torch.float16
    assert parse_dtype(None) is None
    with pytest.raises(ConfigError, match=r"^out_dtype: unknown dtype 'int8'"):
        parse_dtype("int8", "out_dtype")


def test_resolve_device_mps_only_where_it_exists():
    if torch.backends.mps.is_available():
        assert resolve_device("mps").type == "mps"
    else:
        with pytest.raises(ConfigError, match=r"^--device: device 'mps' is not available"):
            resolve_device("mps", "--device")


def test_items_per_call_fits_the_host_budget_between_one_and_the_cap():
    from mergekit_het.runtime.device import HOST_BUDGET, items_per_call

    cpu = torch.device("cpu")
    assert items_per_call(1, cpu, 64) == 64
    assert items_per_call(HOST_BUDGET // 3, cpu, 64) == 3
    assert items_per_call(HOST_BUDGET + 1, cpu, 64) == 1  # one item over the budget still runs
