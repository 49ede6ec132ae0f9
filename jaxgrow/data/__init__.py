"""The data wing: raw formats -> tokenizers -> token shards (writer, manifest, TokenStore) -> a run's corpus ->
the grain pipeline, each module importing only those before it; the `tokenize` command sits on top.
Imports storage and config only (and model.losses for document segment ids, never anything else above)."""
