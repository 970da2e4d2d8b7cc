"""How a step executes: marking blocks, planning a traced step, storing plans, the
compilation cache, device placement, and every use of JAX's internals. Imports `core` only."""
