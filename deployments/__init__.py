"""Deployment definitions: Kubernetes templates and manifests, Grafana, Prefect automations."""
