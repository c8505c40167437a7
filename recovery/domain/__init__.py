"""Recoup's decisions as pure functions: no database, no Django, nothing of the project.

- `declines`: a decline's track (the table and `classify`).
- `budgets`: may a card take one more attempt (network budgets, do-not-retry advice).
- `timing`: when to retry (candidate slots in the customer's zone, learned choice).
- `facts`: what a case is, as frozen values, read for it by `recovery.engine.case_facts`.
- `planning`: the next retry and the next message of a case, and why.

Every function takes what it decides from as arguments (statistics included), so each is
tested from a table of cases without a database (tests/recovery/domain/).
"""
