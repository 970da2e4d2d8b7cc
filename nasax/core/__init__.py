"""What every layer may use and that knows no strategy, op or space: the config schema,
registries, errors, atomic files and storage errors, run directories and their locks,
processes of a multi-host job, checkpoints. Imports nothing above it, and no JAX on import."""
