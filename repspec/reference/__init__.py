"""The pure-NumPy, float64 reference: each public function is a chapter of SPEC.md.

This package never imports torch (``tests/test_ref_no_torch.py`` proves it).
"""
