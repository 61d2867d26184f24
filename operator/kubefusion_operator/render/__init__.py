"""Pure builders of the Kubernetes objects a FusionRun owns: one module per kind of child.

Builders take a RenderContext (the run's identity, spec and operator settings) and a planner Task and
return plain dicts. They never import a Kubernetes client and never read the environment.
"""
