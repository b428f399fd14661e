"""The shared file readers' checks: finite weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from closedloop.errors import ClosedLoopError
from closedloop.model.files import check_finite


def test_finite_weights_and_integer_buffers_pass():
    check_finite(Path("model.pt"), {"weight": torch.ones(3), "num_batches_tracked": torch.tensor(7),
                                    "initializer": np.ones(2, np.float16), "shape": np.array([1, 2])})


@pytest.mark.parametrize("value", [torch.tensor([1.0, float("nan")]), torch.tensor([-np.inf], dtype=torch.float64),
                                   np.array([np.inf], np.float32), torch.tensor([complex(1, float("nan"))])],
                         ids=["nan", "-inf-float64", "inf-numpy", "complex"])
def test_a_non_finite_weight_is_named_in_one_line(value):
    with pytest.raises(ClosedLoopError, match=r"^model.pt: tensor 'layer1_bn.running_mean' holds non-finite values$"):
        check_finite(Path("model.pt"), {"weight": torch.ones(3), "layer1_bn.running_mean": value})
