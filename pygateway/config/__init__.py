"""The APISIX-shaped config, on the master's side: its models (`models`), their validation (`validate`)
and the compile into the message every worker receives (`snapshot`). Workers import none of it: they
read `pygateway.worker.compiled`."""
