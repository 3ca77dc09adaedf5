"""Guards of the sparse kernel maps against int32 pair positions and int64 site keys wrapping."""
import pytest
import torch

from dense3d.errors import SparseTensorError
from dense3d.ops.sparse import kernel_map as km


def _sites(n: int = 12, size: int = 6, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(batch * size**3, generator=g)[:n]  # unique sites
    b, rest = cells // size**3, cells % size**3
    return torch.stack([b, rest // size**2, rest // size % size, rest % size], 1).to(torch.int32)


def test_key_range_allows_exactly_2_63_and_refuses_more():
    one = torch.tensor([[0, 0, 0, 0]], dtype=torch.int32)
    two = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.int32)
    shape = (2**21, 2**21, 2**21)  # volume 2**63: keys 0 .. 2**63 - 1 for one sample
    km._check_key_range("SubMConv", one, shape, shape)
    with pytest.raises(SparseTensorError, match=r"2 samples x 9223372036854775808 cells"):
        km._check_key_range("SubMConv", two, shape, shape)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_build_refuses_aliasing_site_keys_before_building(backend):
    big = (2**20, 2**20, 2**20)  # 2**60 cells: a batch index of 8 or more aliases
    idx = torch.tensor([[0, 1, 2, 3], [8, 1, 2, 3]], dtype=torch.int32)
    with pytest.raises(SparseTensorError) as info:
        km.build_kernel_map(idx, big, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), True, backend=backend)
    assert "\n" not in str(info.value) and "int64 site keys" in str(info.value)


def test_num_pairs_check_at_the_int32_limit():
    km._check_num_pairs("SubMConv", 2**31 - 1)
    with pytest.raises(SparseTensorError, match=r"2147483648 pairs"):
        km._check_num_pairs("SubMConv", 2**31)


@pytest.mark.parametrize("subm", [True, False])
def test_build_refuses_a_map_over_the_pair_limit(monkeypatch, subm):
    idx = _sites()
    args = (idx, (6, 6, 6), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), subm)
    full = km.build_kernel_map(*args, backend="torch")
    assert full.num_pairs > 4
    monkeypatch.setattr(km, "MAX_PAIRS", full.num_pairs)  # exactly at the limit: fine
    assert km.build_kernel_map(*args, backend="torch").num_pairs == full.num_pairs
    monkeypatch.setattr(km, "MAX_PAIRS", full.num_pairs - 1)
    with pytest.raises(SparseTensorError) as info:
        km.build_kernel_map(*args, backend="torch")
    assert "\n" not in str(info.value) and f"{full.num_pairs} pairs" in str(info.value)
