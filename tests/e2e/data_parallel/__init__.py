"""Data-parallel training against real servers: worker processes that speak HTTP, and the replay.

``worker.py`` is the process (``python -m tests.e2e.data_parallel.worker CONFIG``): it trains
``model.py``'s MLP on its shard and contributes its gradients, writing each contribution and the
answer it got to its ``journal.py``. ``runs.py`` starts servers' sessions and workers for a test;
``replay.py`` computes, from the journals alone, what the session must hold.
"""
