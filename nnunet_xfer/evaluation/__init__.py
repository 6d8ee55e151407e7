"""Evaluation stage: metrics, muscle measures, agreement statistics, fold evaluation, observer
study and report. Never imports the trainers."""
