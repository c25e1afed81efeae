"""HTTP query service (FastAPI + uvicorn; ``pip install 'cbir[serve]'``): ``app`` builds the ASGI app
over an index directory and the dynamic batcher, ``metrics`` renders Prometheus text."""
