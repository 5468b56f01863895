"""Pictures of what the model does: co-attention between words and regions, a chosen box."""

from vilbert.viz.attention import AttentionMaps, co_attention_maps, draw_co_attention, top_regions
from vilbert.viz.boxes import draw_box

__all__ = ["AttentionMaps", "co_attention_maps", "draw_box", "draw_co_attention", "top_regions"]
