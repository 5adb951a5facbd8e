"""data2vec_hf.finetuning."""
