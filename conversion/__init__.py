"""data2vec_hf.conversion."""
