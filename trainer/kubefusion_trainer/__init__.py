"""kubefusion's data plane and trainer: the programs that run in stage pods or local processes.

Importing this package is light (pydantic only); torch, transformers and trl load inside the stages.
"""
