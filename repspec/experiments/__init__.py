"""The papers' experiments as library code (the application layer under the ``repspec`` command).

The package exports nothing itself; import from its modules:

- :mod:`repspec.experiments.demo` — the main job (``repspec demo``): every model over several
  seeds, the tables, plots and ``results.json``, and the claims tested against them;
- :mod:`repspec.experiments.stats` — the demo's statistics: summaries over seeds, paired
  Student-t intervals, the sign test and the computed verdicts;
- :mod:`repspec.experiments.theorem` — the float64 reference demonstration of the RepOpt
  theorem (``repspec theorem``, SPEC §3);
- ``python -m repspec.experiments render|compare`` (:mod:`repspec.experiments.__main__`).
"""
