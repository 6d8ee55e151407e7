"""Synthetic L3 CT cohort with simulated observers (tests, demo, trying the package first).

Entry points: :func:`write_cohort` (to disk) and :func:`make_subject` (one subject in memory).
"""
from nnunet_xfer.phantom.cohort import case_id, write_cohort
from nnunet_xfer.phantom.observers import observer_mask, observer_name, observer_style
from nnunet_xfer.phantom.subject import Subject, make_subject

__all__ = ["write_cohort", "case_id", "make_subject", "Subject", "observer_mask", "observer_name",
           "observer_style"]
