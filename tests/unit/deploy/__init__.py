"""Offline validation of the deployment files: Dockerfile, compose stack, Kustomize base and dashboards.

The validators (check-jsonschema, kubernetes-validate, kubectl) are required: a missing tool fails the test.
"""
