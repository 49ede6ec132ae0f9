"""The data wing, bottom up: formats (raw inputs) -> tokenizers (and a run's tokenizer: its one lookup and pin) ->
shards (the tokenize writer, manifests) -> store (TokenStore, the reader) -> corpus (a run's sources and caches) ->
pipeline (grain windows and batches; the one builder of eval batches); each module imports only the ones before it,
and the `tokenize` command sits on top. May import model (meshes, for device batches), storage and config."""
