"""Is it still true? Drift detection, repair, expiry and the auditor's report.

- ``drift``: for every grant the ledger says is active, read the live policy or
  grants once per resource and classify (``in-force``, ``missing``, ``altered``,
  ``unknown-managed``, informational ``foreign``);
- ``repair``: ``reconcile`` (restore missing/altered, remove unknown-managed) and
  the expiry sweeper, both under the broker's locks, rules and size budgets, each
  change a ledger entry (``reconciled`` / ``expired``);
- ``scheduled``: the scheduled drift check and sweep the Lambda runs, the newest
  drift report and its metrics;
- ``report``: one self-contained HTML page for auditors.
"""
