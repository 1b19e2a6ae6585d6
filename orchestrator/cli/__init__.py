"""The ``fleetpush`` command line."""
