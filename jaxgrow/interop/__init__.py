"""The interop wing: the Hugging Face Llama weight/config mapping and safetensors files (hf.py), the streamed
export of sharded params (export.py). Imports model (the layout), data (tokenizers), storage, config."""
