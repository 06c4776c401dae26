"""``ikd tune``: hyperparameter search over a declared space, with Optuna here and as a Katib Experiment on a
cluster. :mod:`ikd.tune.space` reads and checks the space, :mod:`ikd.tune.study` runs the trials,
:mod:`ikd.tune.report` writes the tables, the Pareto frontier and best-params.yaml; the Experiment is
:mod:`ikd.integrations.katib`."""
