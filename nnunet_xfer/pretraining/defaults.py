"""Defaults of ``nnunet-xfer pretrain`` (standard library only, so the CLI's help can show them)."""

#: Iterations of one pretraining run.
DEFAULT_ITERATIONS = 20000
#: AdamW's initial learning rate (poly decay, as nnU-Net).
DEFAULT_LR = 1e-3
#: Iterations between training-state checkpoints (``--resume`` continues from the last one).
CHECKPOINT_EVERY = 500
#: Jigsaw permutation classes.
DEFAULT_PERMUTATIONS = 100
