"""collector: find files, tell them apart, read lines from a position, commit them.

Invariants (each has a test in tests/test_collector*.py):
- a line is committed to the queue together with the read position after it, in one
  transaction; the in-memory position follows the commit, never leads it;
- the position counts raw bytes consumed (cut lines included), so a re-read line keeps
  its event_uid;
- a file whose identity changed, or that is now shorter than its position, is read from 0;
- a rotated-away or deleted file is read to its end before it is let go;
- memory per file is bounded by max_line_bytes, whatever the file holds.
"""
