"""Deployment assets: serving, work-pool templates and manifests."""
