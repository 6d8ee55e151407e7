"""Which slices to annotate: ``nnunet-xfer select`` and its Python API.

::

    from nnunet_xfer.selection import select_subsets, select_next, write_manifest
    sel = select_subsets(501, strategy="diverse")     # each fold's training cases, best first
    sel.write("diverse.json")                         # then: nnunet-xfer convert … --selection diverse.json
    sel.subset(fold=0, n=5)                           # the 5 cases fold 0's _n5 trainer will get
    nxt = select_next("pool/", k=10, strategy="uncertain", dataset=501, trainer="XferSegTrainer_n10")
    write_manifest("next.csv", nxt)

The strategies, the file format and the workflow: docs/conversion.md. The package stays light to
import (the CLI builds its parser from :data:`STRATEGIES`); the API loads on first use.
"""
from __future__ import annotations

#: The strategies: ``random`` (seeded draw), ``diverse`` (greedy k-centre), ``uncertain``
#: (disagreement of a trained fold ensemble; pools only).
STRATEGIES: tuple[str, ...] = ("random", "diverse", "uncertain")

__all__ = ["MANIFEST_COLUMNS", "STRATEGIES", "NextCases", "Selection", "select_next",
           "select_subsets", "write_manifest"]


def __getattr__(name: str):
    if name in __all__:
        from nnunet_xfer.selection import api
        return getattr(api, name)
    raise AttributeError(f"module 'nnunet_xfer.selection' has no attribute {name!r}")
