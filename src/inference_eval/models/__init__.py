"""Model preparation: random-weight model folders, GGUF files, engine builds."""
