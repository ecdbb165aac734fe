"""Shipped policy documents (tiers.yaml), installed as `protectctl.policies`."""
