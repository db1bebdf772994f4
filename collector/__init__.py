"""collector: find files, tell them apart, read lines from a position, commit them.

Invariants, and the test that checks each (tests/test_collector.py unless named):
- a line is committed to the queue together with the read position after it, in one
  transaction; the in-memory position follows the commit, never leads it
  (TestPositions::test_identical_lines_have_distinct_uids_and_reread_keeps_them);
- the position counts raw bytes consumed (cut lines included), so a re-read line keeps
  its event_uid (TestLineSplitter::test_offsets_count_raw_bytes);
- a file whose identity changed, or that is now shorter than its position, is read from 0
  (TestRotation::test_truncation_rereads_from_zero_with_new_uids,
  TestPositions::test_a_new_file_on_a_reused_inode_gets_new_uids);
- a rotated-away or deleted file is read to its end before it is let go
  (TestRotation::test_rename_reads_old_to_end_then_new_from_start);
- a read that cannot be committed (disk full) is kept and retried, never skipped
  (TestWriteFailures::test_a_failing_disk_loses_no_line);
- memory per file is bounded by max_line_bytes, whatever the file holds
  (TestLineSplitter::test_long_line_cut_and_memory_bounded).
"""
