"""Gates that decide whether a compiled artifact may be used (DESIGN.md §4).

- ``parity``: FP32 ONNX on ONNX Runtime vs its PyTorch module on real photos (every export).
- ``fidelity``: reduced precision (FP16) vs the FP32 reference: true-FP16 estimate, top-k, ΔmAP.

Above the engine and index (they run the artifact and rank with it), below export (which calls them
before an exported file is renamed into place).
"""
