"""Recipes: the library entry points of the experiment's steps, each wiring the library layers below.

- :mod:`~zhlora.recipes.train`: ``train()``, step 5 (read inputs -> prepare -> fit -> finish);
- :mod:`~zhlora.recipes.evaluate`: ``evaluate()``, steps 4 and 6 (items -> identity and resume ->
  engine run -> results files).

Commands (``zhlora train``, ``zhlora evaluate``), the pipeline (``zhlora run``/``sweep``) and
notebooks call these; nothing in the library folders below imports them.
"""
