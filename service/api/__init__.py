"""HTTP: the routes, the KServe V2 REST codec, schemas, the error table, middleware."""
