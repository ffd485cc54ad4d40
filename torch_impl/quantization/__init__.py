"""Quantization: fake quantization, calibrators (observers), PTQ, QAT/ClusterQAT, k-means, quantized export, weight analysis."""
