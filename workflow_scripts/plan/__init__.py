"""The job plan: what to build for a validated config, and each rule's settings (workflow_scripts/plan/jobs.py).

Kept import-light: step CLIs import `plan.settings` to parse their --settings once, so this package's
`__init__` is part of every step's code inputs.
"""
