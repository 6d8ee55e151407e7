"""Clinical stage: from CT studies to muscle measures, QC pictures and viewer files (docs/measure.md)."""
