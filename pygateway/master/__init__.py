"""The master process: supervises the workers (`supervisor`), reads config from its source, a file or a
store (`sources`), validates and compiles it, pushes it to the workers, and serves the admin API (keys in
`admin_keys`) and the status port (`status`), each under uvicorn on a thread (`asgi`)."""
