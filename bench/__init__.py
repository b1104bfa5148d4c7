"""Measurements of ccci-tasks. Run with `make bench`; figures are ratios from one run."""
