"""The shared types and helpers every layer may use: regions and batches, the `Task` interface,
where a model runs, fixed subsets of a dataset, and where the shipped assets are.

It imports no other part of vilbert (docs/ARCHITECTURE.md, "Layers"), so that model, data,
features, tasks and train can all depend on it without depending on each other.
"""
