"""Embedding engine (torch-free): image decoding/preprocessing, backends, bulk and online batching.

- ``preprocess``: any file/bytes/PIL image/array -> uint8 H×W×3 with the model's one resampling policy.
- ``backends``: loader + runner pairs (ONNX Runtime CPU/CUDA/TensorRT EP, native TensorRT plans),
  optional dependencies imported lazily, chosen by name from ``backends.BACKENDS``.
- ``bulk``: pipelined decode-on-a-pool + inference over many files, bounded memory, stable order.
- ``batcher``: dynamic batcher for online requests (futures, max batch, max delay, bounded queue).
- ``embedder``: the three-line Python API, ``Embedder``.
"""
