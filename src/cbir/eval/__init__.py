"""How retrieval is scored, shared by ``cbir bench``, ``cbir validate`` and fine-tuning: the labelled
data sets and the Corel-1K split (``protocol``), the metrics (``metrics``), and ranking a labelled set
with the index's own search path (``ranking``). Torch-free."""
