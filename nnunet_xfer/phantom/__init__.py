"""phantom stage of nnunet_xfer."""
