"""Retrieval models (torch): EfficientNet trunks cut after Block 6/7, pooling heads, PCA-whitening, L2.

- ``archs``: the supported architectures and their facts (input size, Block 6/7 dims, mean/std).
- ``trunk``: builds ``conv_stem, bn1, blocks[:k]`` from timm and loads weights.
- ``functional`` / ``pooling``: pooling formulas as pure functions and thin ``nn.Module`` wrappers,
  chosen by name from one registry.
- ``whitening``: PCA-whitening fit (NumPy) and its module.
- ``retrieval``: the whole exported model, uint8 NHWC in, L2-normalised float32 out.
"""
