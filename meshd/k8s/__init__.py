"""meshd on Kubernetes: the objects that install it and the sidecar-injection webhook.

Everything here is pure (dicts in, dicts out) so it is tested without a cluster; the CLI
(`meshd k8s ...`) only adds argument parsing, YAML output and the HTTPS listener.
"""
