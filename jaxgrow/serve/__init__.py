"""The serve wing: prefill + KV-cache decoding and sampling (decode.py), speculative sampling across family members
and draft acceptance (speculative.py), on params it is given (the `sample` command finds them: family/serving.py).
May import model and config."""
