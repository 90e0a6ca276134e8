"""Detection branches: one protocol, a registry of families, built from a bundle's config."""

from aligngemini.branches.base import Branch, available_families, build_branch, register_family

__all__ = ["Branch", "available_families", "build_branch", "register_family"]
