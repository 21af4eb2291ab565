import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)

import contextlib  # noqa: E402

import pytest  # noqa: E402


class Killed(BaseException):
    """Raised inside a run to simulate the process dying (not an Exception: simulate must not catch it)."""


@pytest.fixture
def killed_at_gd_step(monkeypatch):
    """Context manager factory: inside ``with killed_at_gd_step(n):`` the n-th GD step raises ``Killed``."""
    from rodflow.processes import gd as gd_module

    @contextlib.contextmanager
    def kill(n: int):
        original = gd_module.GD.advance
        calls = {"n": 0}

        def dying(self):
            calls["n"] += 1
            if calls["n"] == n:
                raise Killed()
            return original(self)

        monkeypatch.setattr(gd_module.GD, "advance", dying)
        try:
            with pytest.raises(Killed):
                yield
        finally:
            monkeypatch.setattr(gd_module.GD, "advance", original)

    return kill
