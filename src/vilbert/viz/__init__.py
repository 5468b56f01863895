"""Pictures of what the model does: co-attention between words and regions."""

from vilbert.viz.attention import AttentionMaps, co_attention_maps, draw_co_attention, top_regions

__all__ = ["AttentionMaps", "co_attention_maps", "draw_co_attention", "top_regions"]
