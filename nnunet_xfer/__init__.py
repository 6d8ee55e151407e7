"""nnunet_xfer: transfer learning for data-efficient L3 muscle segmentation inside nnU-Net v2."""

__version__ = "0.1.0"
