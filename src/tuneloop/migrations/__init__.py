"""Alembic migrations of the workspace database (API keys, request log, feedback store).

`tuneloop.db.engine()` upgrades to the newest revision on first contact. Revisions only create: a table that
already exists (a database made before migrations existed) is left as it is, rows included. New revision:
`alembic -c src/tuneloop/migrations/alembic.ini revision -m "..."`, then write `upgrade()` by hand.
"""
