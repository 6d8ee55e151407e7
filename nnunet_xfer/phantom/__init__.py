"""Synthetic L3 CT cohort with simulated experts (tests, demo, trying the package first).

Entry points: :func:`write_cohort` (to disk, optionally with the segmentation source task) and
:func:`make_subject` (one subject in memory); :func:`write_source_task` writes the source task
alone.
"""
from nnunet_xfer.phantom.cohort import case_id, write_cohort
from nnunet_xfer.phantom.observers import observer_mask, observer_name, observer_style
from nnunet_xfer.phantom.source_task import write_source_task
from nnunet_xfer.phantom.subject import Subject, make_subject

__all__ = ["write_cohort", "write_source_task", "case_id", "make_subject", "Subject",
           "observer_mask", "observer_name", "observer_style"]
