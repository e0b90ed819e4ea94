"""The gradhealth SDK: package models, analyse them locally, render reports."""

from gradhealth.diagnostics.schema import Finding, Report

from .packaging import package, save_batch

__all__ = ["Finding", "Report", "package", "save_batch"]
