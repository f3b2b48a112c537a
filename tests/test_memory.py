"""Peak memory measurement."""

import torch

from convrnn.memory import peak_memory_bytes


def test_peak_counts_what_is_alive_at_once_not_what_was_allocated_in_all():
    """Two 4 MiB tensors alive together, then freed, then a third: the peak is 8 MiB, not 12."""
    n = 2**20  # float32: 4 MiB

    def work():
        a = torch.ones(n)
        b = torch.ones(n)
        del a, b
        c = torch.ones(n)
        del c

    peak = peak_memory_bytes(work)
    assert 8 * 2**20 <= peak < 9 * 2**20, peak
