"""Core: errors, settings, the request, job records, states, result info, images, metadata,
polling and prompt interpolation. No network, no store, no imports from the layers above."""
