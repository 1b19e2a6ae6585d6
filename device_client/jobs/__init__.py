"""The persisted update job: its states and edges, the install policy, and the health check."""
