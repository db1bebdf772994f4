"""ila_core: the ground layer every package shares — time, errors, reading settings.

It imports nothing of the project, so every layer above may import it:
ila_core ← queue_store ← {collector, forwarder} ← ila_agent ← {ops, bench, tests}
(tests/test_layers.py fails on any import that runs the other way).
"""
