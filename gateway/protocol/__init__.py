"""Open Inference Protocol v2 (with Triton's binary data extension) and KServe v1 codecs."""
