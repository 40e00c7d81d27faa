"""The engine: job handles, the worker policy, groups of jobs, batches, pacing, budgets and
image-input resolution, over the API port and the store."""
