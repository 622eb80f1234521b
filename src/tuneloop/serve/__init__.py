"""`tuneloop serve`: registered models behind an OpenAI-compatible endpoint (`endpoint.run`), its API keys and request
log (`store`), and the traffic that monitoring and feedback campaigns read back (`traffic`).

Nothing is imported here: the request log and the traffic are read by `tuneloop monitor` and `tuneloop feedback`,
which do not need the gateway's packages (the `serve` extra)."""
