"""dataset_conversion stage of nnunet_xfer."""
