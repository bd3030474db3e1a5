"""Governance (seed 000 §4, §15): consent and its withdrawal, deletion of a withdrawn user's data within 24 h,
retention purges, legal holds, approvals and access control.

- ``access``: operator roles, 4-eyes approvals, legal holds, signed URLs to originals;
- ``consent``: ``ml_consent`` changes (grant, withdraw, consent-change events from the app), each audited;
- ``purge``: the crash-safe deletion of vault objects and their rows (shared with retention), and
  ``purge_user_data`` for a withdrawal's deletion request;
- ``retention``: expiry per plan and kind, the daily and the day-partitioned purge, orphan listing.

Every function takes the clock as an explicit, timezone-aware ``now``.
"""
