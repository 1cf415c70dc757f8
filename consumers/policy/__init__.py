"""The policy consumer: the retention_policies table reconciled into TimescaleDB jobs.

``model`` computes the desired jobs from the table; ``engines`` read and change the
actual jobs (TimescaleDB's job API on the Community edition, pg_cron on the Apache
edition); ``reconcile`` diffs the two into a plan and applies it; ``consumer`` runs
reconciles on change events and periodically.
"""
