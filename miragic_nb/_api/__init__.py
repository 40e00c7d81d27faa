"""The Miragic API: the HTTP transport (deadlines, caps, retries, the key kept to its origin)
and the API calls. Imports only from ``_core``."""
