"""Analytic per-op FLOPs, bytes, arithmetic intensity and roofline for Llama-shaped models.

``ops`` counts one op (FLOPs and the tensors it moves), ``hardware`` reads the ceilings of a
hardware profile, ``roofline`` turns both into intensity, bound and time, ``bound`` gives the
end-to-end lower bound of a dataset, ``figures`` draws the roofline, ``cli`` is `inference-eval theory`.
"""
