"""nnunet_xfer: transfer learning for data-efficient L3 muscle segmentation inside nnU-Net v2.

``from nnunet_xfer import MeasureConfig, measure_studies`` is the Python twin of ``nnunet-xfer
measure --cases`` (docs/measure.md); it is imported on first use, so ``import nnunet_xfer`` stays
light.
"""

__version__ = "0.1.0"

__all__ = ["MeasureConfig", "measure_studies", "__version__"]


def __getattr__(name: str):
    if name in ("measure_studies", "MeasureConfig"):
        from nnunet_xfer.clinical import api
        return getattr(api, name)
    raise AttributeError(f"module 'nnunet_xfer' has no attribute {name!r}")
