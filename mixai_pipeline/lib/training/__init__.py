"""Weekly training of the three CPU models (seed 000 §10): training set, grouped CV, synthetic rows."""
