"""Deployment helpers: template validation, AWS emulation, build budgets."""
