"""The APISIX-shaped config: its models and validation (`validate`) and the snapshot the master
compiles for the workers (`snapshot`)."""
