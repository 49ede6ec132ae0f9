"""The data wing, bottom up: formats (raw inputs) -> tokenizers -> shards (the tokenize writer, manifests) -> store
(TokenStore, the reader) -> corpus (a run's sources and caches) -> pipeline (grain windows and batches); each module
imports only the ones before it, and the `tokenize` command sits on top. Imports storage and config only."""
