"""Names of the decoder-layer ops, shared by theory (FLOPs, bytes) and profiling (measured time).

Order and meaning: the op table of docs/theory.md.
"""

OPS = (
    "qkv_proj",       # Q,K,V = X W_QKV
    "rope",           # RoPE(Q, K)
    "kv_cache",       # K,V cache update (append in place, or concat copy)
    "attention",      # O = softmax(QK^T / sqrt(d)) V
    "o_proj",         # X = O W_O
    "add_norm_attn",  # residual add + RMSNorm (input_layernorm)
    "gate_up_proj",   # G, U = X [W_G, W_U]
    "act_mul",        # D = Swish(G) * U
    "down_proj",      # X = D W_D
    "add_norm_mlp",   # residual add + RMSNorm (post_attention_layernorm)
)
OTHER = "other"       # kernels outside any op range (reported, never hidden)
STAGES = ("prefill", "decode")
