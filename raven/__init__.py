"""Raven overlay: an edge network overlay manager for Kubernetes node pools."""

__version__ = "0.1.0"
