"""data2vec_hf.model_cards."""
