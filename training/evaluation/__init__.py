"""Evaluating controllers side by side (`python -m training.evaluate` is the command line):

- `runs`: the samples, each controller's run over them, and the loop that replays them;
- `compare`: tables, ratios to the references with paired intervals, gap shares, summaries;
- `report`: the printed tables, plots, the JSON record and the W&B run.
"""
