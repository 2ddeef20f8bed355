import pytest

from mergekit_het.errors import ConfigError
from mergekit_het.federated.config import PartitionConfig
from mergekit_het.federated.partition import dirichlet, iid, make_partition, pathological

LABELS = [i % 5 for i in range(203)]


def _assert_partition(parts, n):
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))  # covering and disjoint


def test_iid_sizes_differ_by_at_most_one():
    parts = iid(203, 7, seed=0)
    _assert_partition(parts, 203)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("alpha", [0.05, 0.1, 1.0, 100.0])
def test_dirichlet_any_alpha_is_valid_partition(alpha):
    parts = dirichlet(LABELS, 10, alpha, seed=3)
    _assert_partition(parts, len(LABELS))
    assert min(map(len, parts)) >= 1


def test_dirichlet_small_alpha_skews_labels_large_alpha_does_not():
    def mean_classes(alpha):
        parts = dirichlet(LABELS, 10, alpha, seed=1)
        return sum(len({LABELS[i] for i in p}) for p in parts) / len(parts)

    assert mean_classes(0.05) < 2.5
    assert mean_classes(1000.0) == 5.0


def test_dirichlet_same_seed_same_partition_other_seed_differs():
    assert dirichlet(LABELS, 6, 0.3, seed=5) == dirichlet(LABELS, 6, 0.3, seed=5)
    assert dirichlet(LABELS, 6, 0.3, seed=5) != dirichlet(LABELS, 6, 0.3, seed=6)


@pytest.mark.parametrize("clients,per_client", [(5, 1), (12, 1), (7, 2)])
def test_pathological_clients_hold_exactly_their_classes(clients, per_client):
    parts = pathological(LABELS, clients, per_client, seed=0)
    _assert_partition(parts, len(LABELS))
    assert all(len({LABELS[i] for i in p}) == per_client for p in parts)


def test_pathological_too_few_clients_raises():
    with pytest.raises(ConfigError, match="cannot cover 5 classes"):
        pathological(LABELS, 4, 1, seed=0)


def test_make_partition_empty_client_raises():
    with pytest.raises(ConfigError, match="received no examples"):
        make_partition([0, 0, 0, 1], PartitionConfig(scheme="pathological", num_clients=4), seed=0)
