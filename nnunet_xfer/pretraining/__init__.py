"""pretraining stage of nnunet_xfer."""
