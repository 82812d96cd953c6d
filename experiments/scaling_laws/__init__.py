"""Scaling-law study: fit Kaplan and Chinchilla (Approaches 1-3) laws to a table of runs.

`python -m experiments.scaling_laws.fit --runs_csv=runs.csv --output_dir=DIR` fits any run
table (a sweep's, or published points with columns N, D, loss) and writes DIR/fit.json
and plots; the library code is research/scaling/.
"""
