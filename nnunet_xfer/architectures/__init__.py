"""architectures stage of nnunet_xfer: torchvision-backbone networks that nnU-Net plans can name.

Import-light: the registry below needs no torch; the network modules are imported by nnU-Net
from the dotted class name in the plans.
"""
from nnunet_xfer.architectures.registry import ARCHITECTURES, is_torchvision_network

__all__ = ["ARCHITECTURES", "is_torchvision_network"]
