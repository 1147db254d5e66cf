"""Hand-written kernels for where XLA's own code generation falls short (see each module). Importing this
package registers them as optional backends (resd_jax/backends.py); models/ and distill/ never import it."""
from resd_jax.kernels import cpu_attention, cpu_top_k  # noqa: F401 (registers the backends)
