"""Export (torch): retrieval models to ONNX with metadata, TensorRT engines, Triton entries.

- ``onnx``: ``export_onnx`` writes uint8 NHWC -> L2-normalised float32 graphs with cbir metadata,
  gated by ``cbir.validate`` before the file is renamed into place.
- ``trt_lint``: static check against TensorRT's ONNX parser (no GPU needed).
- ``tensorrt``: ``build_engine`` (GPU; the plan manifest lives engine-side, ``engine.backends.tensorrt_plan``).
- ``triton``: a Triton model-repository entry.
"""
