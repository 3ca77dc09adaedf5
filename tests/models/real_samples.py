"""Read the real nuScenes keyframe and ScanNet scene of ``samples`` into model batches
(by hand: the data package's loaders and collate are separate work)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dense3d.structures import Batch, BoxAnnotations, Boxes3D, Sample
from dense3d.structures.sample import CameraImages, PointCloud

NUSC_CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian", "traffic_cone", "barrier")
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def nuscenes_sample(samples: Path, image_size: tuple[int, int] = (128, 352)) -> Sample:
    """LiDAR (N, 5), six cameras resized to ``image_size`` (intrinsics scaled to match), boxes."""
    d = samples / "nuscenes"
    info = pickle.load(open(next(d.glob("*.pkl")), "rb"))["data_list"][0]
    pts = np.fromfile(d / info["lidar_points"]["lidar_path"], dtype=np.float32).reshape(-1, 5)
    images, cam2img, lidar2cam = [], [], []
    for cam in CAMERAS:
        c = info["images"][cam]
        img = torch.from_numpy(np.array(Image.open(d / c["img_path"]).convert("RGB"))).permute(2, 0, 1).float() / 255  # (H, W, 3) -> (3, H, W)
        h0, w0 = img.shape[-2:]
        images.append(F.interpolate(img[None], size=image_size, mode="bilinear", align_corners=False)[0])
        k = torch.eye(4)
        k[:3, :3] = torch.tensor(c["cam2img"], dtype=torch.float32)
        k[0] *= image_size[1] / w0  # resize: u' = u * W' / W
        k[1] *= image_size[0] / h0
        cam2img.append(k)
        lidar2cam.append(torch.tensor(c["lidar2cam"], dtype=torch.float32))
    inst = [i for i in info["instances"] if i["bbox_3d_isvalid"]]
    boxes = torch.tensor([i["bbox_3d"] + list(i["velocity"]) for i in inst], dtype=torch.float32).nan_to_num(0.0)  # gravity-centred (see FACTS); unknown velocity -> 0
    labels = torch.tensor([i["bbox_label_3d"] for i in inst])
    return Sample(
        "nuscenes",
        points=PointCloud(torch.from_numpy(pts), ("x", "y", "z", "intensity", "ring")),
        cameras=CameraImages(torch.stack(images), torch.stack(cam2img), torch.stack(lidar2cam), CAMERAS),
        boxes=BoxAnnotations(Boxes3D(boxes), labels, NUSC_CLASSES),
    )


def scannet_sample(samples: Path) -> Sample:
    """The ScanNet scene: (N, 6) x, y, z, r, g, b with colours scaled to [0, 1]."""
    pts = torch.from_numpy(np.fromfile(samples / "scannet" / "scene0000_00.bin", dtype=np.float32).reshape(-1, 6)).clone()
    pts[:, 3:] /= 255.0
    return Sample("scannet", points=PointCloud(pts, ("x", "y", "z", "r", "g", "b")))


def collate(samples: list[Sample], with_points: bool = True, with_cameras: bool = True) -> Batch:
    batch = Batch(samples)
    if with_points and all(s.points is not None for s in samples):
        batch.points = torch.cat([torch.cat([torch.full((len(s.points), 1), float(b)), s.points.points], 1) for b, s in enumerate(samples)])
    if with_cameras and all(s.cameras is not None for s in samples):
        batch.images = torch.stack([s.cameras.images for s in samples])
        batch.cam2img = torch.stack([s.cameras.cam2img for s in samples])
        batch.lidar2cam = torch.stack([s.cameras.lidar2cam for s in samples])
        batch.lidar2img = batch.cam2img @ batch.lidar2cam
        batch.camera_mask = torch.ones(len(samples), dtype=torch.bool)
    return batch
