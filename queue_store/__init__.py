"""queue_store: the on-disk queue between the collector and the forwarder.

Invariants (each has a test in tests/test_store.py):
- ``commit`` stores lines and the read position after them in one transaction;
- an item is acked only by ``finish`` (the server accepted every entry of it, or the ones it
  rejected alone are kept as dead letters in the same transaction);
- leased items left unacked by a crash are ready again at the next open;
- besides acks, only a counted ``drop_oldest`` removes pending entries;
- the buffer never holds pickle: items are JSON;
- one process owns a buffer; a corrupt buffer file is moved aside, never silently reused.
"""
