"""The interop wing: the Hugging Face Llama weight/config mapping (hf.py), safetensors files (safetensors_files.py),
the streamed export of sharded params (export.py): formats only (which run and member to export is family/hf_runs.py).
May import model (the layout), data (tokenizers), storage and config."""
