"""``wsfs serve``: a read-only REST API over a repository (``docs/api.md``).

The top layer, beside ``cli``: it imports ``versions``, ``cache``,
``repository``, ``format``, ``metrics``, ``config`` and ``errors``, never
``daemon`` or ``layer``.  Modules: ``names`` (how byte names travel in URLs and JSON),
``auth`` (bearer tokens from a TOML config), ``backend`` (the blocking side:
records, manifests, verified content, tar archives, run on bounded thread
pools), ``app`` (the Starlette application: routes, HTTP caching and ranges,
JSON errors), ``metrics`` (``/metrics``), ``openapi`` (the OpenAPI 3
document), ``server`` (listen
address policy and uvicorn).
"""
