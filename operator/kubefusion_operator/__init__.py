"""kubefusion's control plane: the FusionRun API, the planner, renderers, the kopf operator and the CLI.

Importing this package is light: kopf and the Kubernetes client load only where the operator runs.
"""
