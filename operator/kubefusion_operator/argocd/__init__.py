"""Argo CD integration: health.lua (a custom health check for FusionRun), shipped as package data."""
