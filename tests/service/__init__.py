"""HTTP contract tests for optim-service (the contract: docs of the v1 API)."""
