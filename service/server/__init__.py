"""Running the app: gunicorn's process management, uvicorn's workers, and bounded connections."""
