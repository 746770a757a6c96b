"""Injectable FastAPI dependencies of the IoU Maps endpoints (titiler style), by concern."""
