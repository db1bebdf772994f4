"""queue_store: the on-disk queue between the collector and the forwarder.

Invariants, and the test that checks each (tests/test_store.py unless named):
- ``commit`` stores lines and the read position after them in one transaction
  (TestCommit::test_lines_and_position_committed_together);
- an item is acked only by ``QueueStore.ack``, once every entry of its lease is settled; the
  entries rejected alone are kept as dead letters in the same transaction
  (TestLease::test_ack_only_when_every_entry_settled; a failed ack gives the lease back:
  TestNothingLostAtTheEdges::test_a_failed_ack_leaves_the_lease_to_be_released);
- every leased batch ends in exactly one verb: ack, retry, split or dead_letter
  (tests/test_forwarder_unit.py::TestBatchVerbs);
- leased items left unacked by a crash are ready again at the next open
  (TestLease::test_unacked_items_are_ready_again_after_a_crash,
  TestNothingLostAtTheEdges::test_leases_of_a_dead_process_with_our_pid_are_resumed);
- two processes never lease the same item
  (TestNothingLostAtTheEdges::test_two_processes_never_lease_the_same_item);
- besides acks, only a counted ``drop_oldest`` removes pending entries
  (TestBudget::test_drop_oldest_counts_every_drop);
- the buffer never holds pickle: items are JSON
  (TestCommit::test_items_are_json_not_pickle, test_tampered_pickle_item_never_runs);
- one process owns a buffer; a corrupt buffer file is moved aside, never silently reused
  (TestOwnership; tests/test_e2e_inputs.py for the quarantine).
"""
