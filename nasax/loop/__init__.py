"""The run loop: data, optimizers, epochs, logs and progress, checkpoints, resume, time
limits (`nasax.loop.run.run`). Imports `engine` and `core`."""
