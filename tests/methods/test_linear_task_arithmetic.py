"""linear and task_arithmetic against hand computations (ALGORITHMS.md §9 items 1-4)."""

import torch

from mergekit_het.methods import get_method

T = torch.tensor


def run(name, base, tensors, **params):
    return get_method(name).apply(base, tensors, **params)


def test_linear_normalized_weights_hand_computed():
    out = run("linear", None, [T([1.0, 2.0]), T([3.0, 6.0])], weight=[1.0, 3.0])
    assert torch.equal(out, T([2.5, 5.0]))


def test_linear_unnormalized_weights_hand_computed():
    out = run("linear", None, [T([1.0, 2.0]), T([3.0, 6.0])], weight=[1.0, 3.0], normalize=False)
    assert torch.equal(out, T([10.0, 20.0]))


def test_linear_scaled_weights_same_output():
    xs = [torch.randn(5), torch.randn(5)]
    a = run("linear", None, xs, weight=[0.2, 0.7])
    b = run("linear", None, xs, weight=[2.0, 7.0])
    torch.testing.assert_close(a, b)


def test_linear_single_model_returned_within_one_rounding():
    # mergekit 0.1.5 order: (0.3·x)/0.3, exact for weight 1, else within one rounding
    x = torch.randn(7)
    assert torch.equal(run("linear", None, [x], weight=[1.0]), x)
    torch.testing.assert_close(run("linear", None, [x], weight=[0.3]), x, rtol=2**-23, atol=0)


def test_linear_does_not_mutate_inputs():
    x, y = torch.ones(3), torch.zeros(3)
    run("linear", None, [x, y], weight=[1.0, 1.0])
    assert torch.equal(x, torch.ones(3)) and torch.equal(y, torch.zeros(3))


def test_task_arithmetic_hand_computed():
    b, t1, t2 = T([0.0, 0.0]), T([1.0, -2.0]), T([3.0, 4.0])
    assert torch.equal(run("task_arithmetic", b, [t1, t2], weight=[0.5, 0.5]), T([2.0, 1.0]))
    assert torch.equal(run("task_arithmetic", b, [t1, t2], weight=[0.5, 0.5], lambda_=0.5), T([1.0, 0.5]))
    assert torch.equal(run("task_arithmetic", b, [t1, t2], weight=[1.0, 1.0], normalize=True), T([2.0, 1.0]))
    assert torch.equal(run("task_arithmetic", b, [t1, t2], weight=[1.0, 1.0]), T([4.0, 2.0]))


def test_task_arithmetic_nonzero_base_adds_base():
    b = T([1.0, 1.0])
    out = run("task_arithmetic", b, [T([2.0, 3.0])], weight=[1.0], lambda_=0.5)
    assert torch.equal(out, T([1.5, 2.0]))


def test_task_arithmetic_weights_summing_to_zero_normalize_no_nan():
    b = T([0.0])
    out = run("task_arithmetic", b, [T([1.0]), T([2.0])], weight=[1.0, -1.0], normalize=True)
    assert torch.equal(out, T([-1.0]))


def test_task_arithmetic_zero_weights_give_base():
    b = torch.randn(4)
    out = run("task_arithmetic", b, [torch.randn(4), torch.randn(4)], weight=[0.0, 0.0])
    assert torch.equal(out, b)
