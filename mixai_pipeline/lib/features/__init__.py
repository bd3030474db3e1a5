"""Clip features for the mix/master regressors and the preset classifier (seed 000 §5.2, §8)."""
