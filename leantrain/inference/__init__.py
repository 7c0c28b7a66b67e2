"""Using a trained model: the saved model file, batched decoding of text lines, evaluate and predict."""
