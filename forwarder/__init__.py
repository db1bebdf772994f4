"""forwarder: lease batches from the buffer, send them, settle them by the server's answer.

Invariants, and the test that checks each (tests/test_forwarder_unit.py unless named):
- entries are acked only after a 2xx for a batch that holds them
  (TestDelivered::test_entries_are_not_acked_before_the_answer);
- no batch is sent before registration has succeeded
  (TestRegistrationGate::test_no_batch_before_registration);
- the protocol's answer table lives in one function, ``outcome.classify``, for every request
  (tests/test_outcome.py::TestClassify, one test per row);
- a redirect is never followed; the API key travels only in the X-API-Key header
  (TestTransient::test_redirect_is_not_followed,
  TestWireFormat::test_the_key_is_only_in_the_header);
- a retry never delays the heartbeat: they run on separate threads and deadlines
  (TestHeartbeat::test_beats_at_exactly_the_interval);
- lines of one source are sent in the order they were read
  (TestWireFormat::test_order_is_commit_order).
"""
