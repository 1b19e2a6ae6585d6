"""Small pieces both sides share that do I/O: atomic writes, backoff, clocks and durations."""
