"""The store: SQLite history of every job, batches, the credit ledger, embedded metadata in saved
files. Imports only from ``_core``; reached from the engine, never from a face."""
