def inv_sqrt_psd(*a, **k):
    raise NotImplementedError


def newton_schulz_inv_sqrt(*a, **k):
    raise NotImplementedError
