"""Kubernetes serving: manifests of the model server rendered from templates, and validated."""
