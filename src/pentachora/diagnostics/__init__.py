"""Diagnostics: geometry reports, the CV precision auditor, convergence-order monitoring, plots."""
