"""architectures stage of nnunet_xfer."""
