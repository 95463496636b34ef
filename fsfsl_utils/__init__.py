"""fsfsl_utils: the few-shot solar-cell defect kit."""
