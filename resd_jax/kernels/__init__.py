"""Hand-written kernels for where XLA's own code generation falls short (see each module)."""
