"""Experiments: a matrix of runs from a TOML file, their JSON records, and the report rebuilt from them."""
