"""The master process: supervises the workers, reads config from its source (file or store), validates
and compiles it, pushes it to the workers, and serves the admin API and the status port."""
