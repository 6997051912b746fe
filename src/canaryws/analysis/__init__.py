"""Comparison of the cohorts: units of analysis, the judge, the report renderers."""
