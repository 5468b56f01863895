"""`vilbert serve`: a small local web page over the inference API (`vilbert.web.app`)."""
