"""The eval's float64 overlaps agree with dense3d.ops; nuScenes' scale_iou ignores centre and yaw."""
import numpy as np
import pytest
import torch

from dense3d import ops
from dense3d.eval.geometry import giou_aa, iou_aa, scale_iou


def _aa(b):
    return np.concatenate([b[:, :3] - b[:, 3:6] / 2, b[:, :3] + b[:, 3:6] / 2], 1)


def test_axis_aligned_iou_and_giou_match_ops():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(-2, 2, (7, 3)), rng.uniform(0.2, 3, (7, 3))], 1)
    b = np.concatenate([rng.uniform(-2, 2, (5, 3)), rng.uniform(0.2, 3, (5, 3))], 1)
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    np.testing.assert_allclose(iou_aa(_aa(a), _aa(b)), ops.boxes_iou_3d_axis_aligned(ta, tb).numpy(), atol=1e-12)
    np.testing.assert_allclose(giou_aa(_aa(a), _aa(b)), ops.generalized_iou_3d_axis_aligned(ta, tb).numpy(), atol=1e-12)


def test_scale_iou_by_hand():
    assert scale_iou(np.array([[4, 2, 1.5]]), np.array([[2, 1, 0.75]]))[0, 0] == pytest.approx(1.5 / 12)
    assert scale_iou(np.array([[4, 2, 1.5]]), np.array([[4, 2, 1.5]]))[0, 0] == 1.0
