"""The synthetic probe (``canaryws probe``): golden batches sent as identities in each cohort,
every answer checked against the contract and the golden outcome, failures reported by kind.

- :mod:`canaryws.probe.golden`: the versioned corpus (``golden/v1.json``) and the check of a result;
- :mod:`canaryws.probe.identities`: who the probe connects as (issued ``probe-<n>`` or a token file);
- :mod:`canaryws.probe.runner`: a round, and rounds every interval;
- :mod:`canaryws.probe.metrics`: its Prometheus metrics.

docs/operating.md, "The synthetic probe", documents it; RUNBOOK.md says what to do when it fails.
"""
