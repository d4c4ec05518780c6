"""Translation: the corpus, the tokenizer, the GRU baseline, training, evaluation, export to a
bundle, and the import of pretrained Marian (OPUS-MT) checkpoints."""
