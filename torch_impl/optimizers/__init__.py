"""Gradient re-parameterization: RepOptimizer (SGD/AdamW with Grad Mult masks), HyperSearch training, scale files."""
