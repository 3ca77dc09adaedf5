"""Datasets reading the real formats (and the synthetic data written in them); formats in
``docs/data_formats.md``."""
from dense3d.data.datasets.base import SENSOR_NAMES, SampleDataset, select_sensors
from dense3d.data.datasets.dense_events import DenseEventsDataset
from dense3d.data.datasets.favdbench import FAVDBenchDataset
from dense3d.data.datasets.joint import JointScenesDataset
from dense3d.data.datasets.scanrefer import SCANNET_CLASSES, ScanReferDataset
from dense3d.data.datasets.tod3cap import TOD3CapDataset

__all__ = [
    "SENSOR_NAMES",
    "SCANNET_CLASSES",
    "DenseEventsDataset",
    "FAVDBenchDataset",
    "JointScenesDataset",
    "SampleDataset",
    "ScanReferDataset",
    "TOD3CapDataset",
    "select_sensors",
]
