"""The web dashboard's static files (``static/``), served by ``orchestrator.api.dashboard``."""
