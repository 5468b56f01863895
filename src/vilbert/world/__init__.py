"""The generated world: scenes, rendering, and annotations in the real datasets' formats."""

from vilbert.world.generate import WorldConfig, generate_world, split_ids

__all__ = ["WorldConfig", "generate_world", "split_ids"]
