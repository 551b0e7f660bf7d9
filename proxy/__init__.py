"""Envoy integration: per-proxy snapshot -> xDS resources -> ADS, plus bootstrap and binary.

- `proxy.snapshot`: the input model (ProxySnapshot, Upstream, Endpoint; the RBAC plan is the
  core's `meshd.intentions.RBACPlan`).
- `proxy.resources.build_resources`: pure translation to Envoy resources keyed by type URL
  (split over `listeners`, `clusters`, `rbac`, `common`).
- `proxy.ads.ADSServer`: the grpc.aio Aggregated Discovery Service (SotW and delta).
- `proxy.bootstrap`: bootstrap JSON, locating the Envoy binary, its command line.

Submodules are not imported here: `import proxy` stays cheap and free of grpc/protobuf.
"""
