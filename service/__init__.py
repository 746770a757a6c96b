"""The IoU Maps web service: a FastAPI application built from titiler factories."""
