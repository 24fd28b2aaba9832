"""The domain: sessions of optimizers, their steps and snapshots, and the rules for Idempotency-Keys."""
