"""ViLBERT: a two-stream vision-and-language BERT (Lu et al., NeurIPS 2019)."""

__version__ = "0.1.0"
