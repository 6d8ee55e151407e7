"""nnunet_xfer: transfer learning for data-efficient L3 muscle segmentation inside nnU-Net v2.

``from nnunet_xfer import measure_studies`` is the Python twin of ``nnunet-xfer measure --cases``
(docs/measure.md); it is imported on first use, so ``import nnunet_xfer`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["measure_studies", "__version__"]


def __getattr__(name: str):
    if name == "measure_studies":
        from nnunet_xfer.clinical.api import measure_studies
        return measure_studies
    raise AttributeError(f"module 'nnunet_xfer' has no attribute {name!r}")
