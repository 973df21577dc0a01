"""The backbone catalog: YAML data, shipped inside the package as `tlkeras.catalog`."""
