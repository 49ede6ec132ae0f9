"""The serve wing: prefill + KV-cache decoding and sampling (decode.py), speculative sampling across family
members and draft acceptance (speculative.py). Imports model and config; the `sample` command is in cli."""
