"""data2vec_hf.pretraining."""
