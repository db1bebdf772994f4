"""forwarder: lease batches from the buffer, send them, settle them by the server's answer.

Invariants (each has a test in tests/test_forwarder*.py):
- entries are acked only after a 2xx for a batch that holds them;
- no batch is sent before registration has succeeded;
- the protocol's answer table lives in one function, ``outcome.classify``;
- a redirect is never followed; the API key travels only in the X-API-Key header;
- a retry never delays the heartbeat (they run on separate threads and deadlines);
- lines of one source are sent in the order they were read.
"""
