"""The model registry (MLflow's): registration with lineage and a model card, `models:/` references resolved to
local copies, aliases `@challenger`/`@champion` with a history, promotion through the recipe's gate, rollback.

Modules: uri (parsing, no heavy imports), materialize (download + verify), register, aliases (history, lock),
promotion (cached evaluation, gate, alias move), lineage, views (tables), card (model card).
"""
