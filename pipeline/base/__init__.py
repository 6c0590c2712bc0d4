"""Shared building blocks: options, storage, the row schema, listing, maps, progress, and the results
store (Delta tables, the write lease, sandboxed SQL views, migration). Imports only ``trufor_core``."""
