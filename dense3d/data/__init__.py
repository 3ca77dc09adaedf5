"""dense3d.data: datasets for the real formats (``docs/data_formats.md``), transforms, collate,
converters, and the synthetic benchmark (``dense3d.data.synthetic``)."""
from dense3d.data.collate import collate

__all__ = ["collate"]
