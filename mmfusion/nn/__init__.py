"""Building blocks the encoders, fusion modules and models are made of:
`layers` (Transformer blocks, masked pooling, position embeddings), `heads`
(task heads), `decoder` (an autoregressive Transformer decoder with a KV
cache) and `decoding` (greedy, beam search and sampling under jit),
`kernels` (the per-backend op sets) and `registry` (a module from a registry
name and config options)."""
