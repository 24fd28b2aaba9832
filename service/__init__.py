"""optim-service: the HTTP API around optim_core, with durable storage."""
