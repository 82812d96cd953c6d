"""One config module per study; each has `get_config(arg)` returning an ml_collections.ConfigDict."""
