"""The fast engine's kernels as they were before refimpl's own (frozen copies): the tests hold the new ones
to be no worse."""
