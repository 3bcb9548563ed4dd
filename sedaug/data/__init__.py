"""DESED data: layout and manifests, the synthetic generator, and the mel feature store."""
