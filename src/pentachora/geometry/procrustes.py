class ProcrustesMap: ...


def orthogonal_procrustes(*a, **k):
    raise NotImplementedError
