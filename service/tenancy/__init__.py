"""Who calls: API keys, tenants, their quotas and rate limits."""
