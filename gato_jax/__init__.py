"""gato_jax: one decoder-only transformer for acting, text and captions (Reed et al., 2022)."""
