"""mmfusion: multimodal deep learning in JAX/Flax."""
