"""The four task-shaped datasets (s2s, s2l, s16k, l2s): sources, the Llama-2 tokenizer, build rules,
manifests and length figures. Synthetic variants (random token ids) serve tests and the offline default."""
