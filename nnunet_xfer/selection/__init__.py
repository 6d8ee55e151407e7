"""Which slices to annotate: ``nnunet-xfer select`` and its Python API.

::

    from nnunet_xfer.selection import select_subsets, select_next, write_manifest
    sel = select_subsets(501, strategy="diverse")     # each fold's training cases, best first
    sel.write("diverse.json")                         # then: nnunet-xfer convert … --selection diverse.json
    sel.subset(fold=0, n=5)                           # the 5 cases fold 0's _n5 trainer will get
    nxt = select_next("pool/", k=10, strategy="uncertain", dataset=501, trainer="XferSegTrainer_n10")
    write_manifest("next.csv", nxt)

The strategies, the file format and the workflow: docs/conversion.md.
"""
from __future__ import annotations

from nnunet_xfer.selection.api import (MANIFEST_COLUMNS, STRATEGIES, NextCases, Selection,
                                       select_next, select_subsets, write_manifest)

__all__ = ["MANIFEST_COLUMNS", "STRATEGIES", "NextCases", "Selection", "select_next",
           "select_subsets", "write_manifest"]
