"""Export (torch): retrieval models to ONNX with metadata, and the fidelity/parity gates.

- ``onnx``: ``export_onnx`` writes uint8 NHWC -> L2-normalised float32 graphs with cbir metadata.
- ``parity``: compares a compiled artifact with its reference on real photos (cosine, top-k).
"""
