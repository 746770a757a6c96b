"""Computing and caching values: the engine, computers, the Redis store, single flight, fill
runs."""
