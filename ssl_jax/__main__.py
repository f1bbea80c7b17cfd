from ssl_jax.cli import entry

entry()
