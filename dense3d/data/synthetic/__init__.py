"""The synthetic multi-sensor benchmark: scenes written in the real data sets' own formats.

* ``outdoor``: nuScenes / TOD3Cap (mmdet3d v1.1 info pkl, ``.pcd.bin`` LiDAR, six JPEG
  cameras, TOD3Cap caption JSON keyed by annotation token);
* ``indoor``: ScanRefer / ScanNet (``ScanRefer_filtered_{split}.json``, ``{scene}_aligned_vert.npy``,
  ``{scene}_aligned_bbox.npy``);
* ``av``: FAVDBench (mp4 + 4-channel wav + paragraph JSON) and dense audible events
  (ActivityNet-style JSON with labels, azimuth and source object).
* ``joint``: outdoor scenes (as ``outdoor``) with a 4-channel wav each whose audible events
  come from the scene's boxes (dense-events JSON keyed by sample token, ``source_box`` / ``source_token``).

Captions come from a grammar that always relates a region to another one (see
``grammar``), so context is needed to write them. ``docs/synthetic.md`` lists the files.

    from dense3d.data.synthetic import SynthConfig, generate, dataset_stats, format_stats
    generate(SynthConfig(kind="outdoor", scenes=100, seed=0), "data/synthetic/mine/outdoor")
    print(format_stats(dataset_stats("data/synthetic/mine/outdoor")))
"""
from dense3d.data.synthetic.common import KINDS, PALETTE, SynthConfig, load_synth_config
from dense3d.data.synthetic.generate import DEFAULT_SCENES, dataset_stats, format_stats, generate, generate_default, write_oracles

__all__ = [
    "KINDS",
    "PALETTE",
    "SynthConfig",
    "load_synth_config",
    "DEFAULT_SCENES",
    "generate",
    "generate_default",
    "dataset_stats",
    "format_stats",
    "write_oracles",
]
