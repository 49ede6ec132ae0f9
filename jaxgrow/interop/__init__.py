"""The interop wing: the Hugging Face Llama weight/config mapping (hf.py), safetensors files (safetensors_files.py),
the streamed export of sharded params (export.py). Imports model (the layout), data (tokenizers), storage, config."""
