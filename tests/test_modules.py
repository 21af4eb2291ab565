"""Problem.from_module: a user's nn.Module against the same module's loss written by hand."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import rodflow
from rodflow import models
from rodflow.errors import RodflowError
from rodflow.modules import plain_layers

V, T = 5, 6  # vocabulary and sequence length of the toy transformer


class Causal(nn.Module):
    """A causal transformer from standard torch layers (nn.Embedding, nn.TransformerEncoderLayer, nn.Linear)."""

    def __init__(self, width=8, heads=2):
        super().__init__()
        self.emb = nn.Embedding(V, width)
        self.pos = nn.Parameter(0.1 * torch.randn(T, width))
        self.enc = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.out = nn.Linear(width, V)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T))

    def forward(self, x):
        return self.out(self.enc(self.emb(x) + self.pos, src_mask=self.mask, is_causal=True))


def mlp():
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(48, 3))


def case(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "mlp":
        return mlp().double(), (torch.randn(30, 6, dtype=torch.float64), torch.randint(0, 3, (30,))), "mse"
    if kind == "cnn":
        return cnn().double(), (torch.randn(20, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (20,))), "mse"
    tokens = torch.randint(0, V, (12, T))
    return Causal().double(), (tokens, tokens.sort(dim=1).values), "ce"


def by_hand(module, data, loss, chunk_size):
    """What a careful user would write: functional_call on the flattened parameters, the math attention kernel."""
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    sizes = [s.numel() for s in shapes]
    w0 = torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def example_loss(w, x, y):
        params = {n: part.view(s) for n, part, s in zip(names, torch.split(w, sizes), shapes)}
        with sdpa_kernel([SDPBackend.MATH]):
            out = torch.func.functional_call(module, params, (x,))
        if loss == "mse":
            return models.mse(out, nn.functional.one_hot(y, out.shape[-1]).to(out.dtype))
        return models.cross_entropy(out, y)

    return rodflow.Problem.from_data(example_loss, data, w0, chunk_size=chunk_size)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "transformer"])
def test_from_module_iterates_equal_a_hand_written_loss(kind):
    module, data, loss = case(kind)
    before = copy.deepcopy(module.state_dict())
    mine = rodflow.Problem.from_module(module, data, loss=loss, chunk_size=8)
    hand = by_hand(module, data, loss, chunk_size=8)
    assert mine.d == hand.d == sum(p.numel() for p in module.parameters())
    assert torch.equal(mine.w0, hand.w0)
    # loose flow tolerances keep the test fast (at the defaults this transformer costs ~1100 gradients per step)
    kw = dict(lr=0.5, steps=10, methods=["gd", "gradient_flow", "rod_flow"], sharpness_every=5, progress=False,
              options={m: {"rtol": 1e-3, "atol": 1e-5} for m in ("gradient_flow", "rod_flow")})
    a, b = rodflow.simulate(mine, **kw), rodflow.simulate(hand, **kw)
    for m in kw["methods"]:
        assert a.status[m] == b.status[m] == "ok"
        np.testing.assert_array_equal(a.iterates[m], b.iterates[m])
        np.testing.assert_array_equal(a.method(m)["loss"], b.method(m)["loss"])
        np.testing.assert_array_equal(a.method(m)["sharpness"], b.method(m)["sharpness"])
    assert np.linalg.norm(a.iterates["gd"][-1] - a.iterates["gd"][0]) > 1e-3  # the run moved
    for key, value in module.state_dict().items():  # the caller's module is never changed
        assert torch.equal(value, before[key]), key


def test_from_module_mse_has_a_residual_and_float_targets_work():
    module, (x, y), _ = case("mlp")
    p = rodflow.Problem.from_module(module, (x, y))
    assert p.has_residual
    r = p.residual(p.w0)
    assert abs(0.5 * float(r @ r) - float(p.loss(p.w0))) < 1e-12
    onehot = nn.functional.one_hot(y, 3).double()
    q = rodflow.Problem.from_module(module, (x, onehot))
    assert float(q.loss(q.w0)) == float(p.loss(p.w0))
    # a callable per-example loss
    c = rodflow.Problem.from_module(module, (x, y), loss=nn.CrossEntropyLoss(reduction="none"))
    with torch.no_grad():
        assert abs(float(c.loss(c.w0)) - float(nn.functional.cross_entropy(module(x), y))) < 1e-12


def test_from_module_flattens_trainable_parameters_only_and_keeps_buffers():
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        module[1].running_mean.uniform_(-1, 1)
        module[1].running_var.uniform_(0.5, 2)
    module.eval()
    module[0].bias.requires_grad_(False)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    p = rodflow.Problem.from_module(module, (x, y))
    trainable = [q for q in module.parameters() if q.requires_grad]
    assert p.d == sum(q.numel() for q in trainable)
    assert torch.equal(p.w0, torch.cat([q.detach().reshape(-1) for q in trainable]))
    with torch.no_grad():
        expected = 0.5 * ((module(x) - y) ** 2).sum(dim=1).mean()
    assert abs(float(p.loss(p.w0)) - float(expected)) < 1e-13  # uses the running statistics


def test_from_module_dtype_and_device():
    module, data, loss = case("mlp")
    p32 = rodflow.Problem.from_module(module.float(), data, loss=loss)
    assert p32.dtype == torch.float32  # the module's own precision by default
    p64 = p32.to("float64")
    assert p64.dtype == torch.float64 and torch.equal(p64.w0.float(), p32.w0)
    assert abs(float(p64.loss(p64.w0)) - float(p32.loss(p32.w0))) < 1e-5
    p = rodflow.Problem.from_module(module, data, loss=loss, dtype="float64", device="cpu")
    assert p.device == torch.device("cpu") and p.dtype == torch.float64


def test_from_module_runs_under_a_meta_default_device():
    module, data, loss = case("transformer")
    torch.set_default_device("meta")
    try:
        p = rodflow.Problem.from_module(module, data, loss=loss, device="cpu", plain=True)
        r = rodflow.simulate(p, lr=0.3, steps=3, methods=["gd", "central_flow", "rod_flow"], sharpness_every=3,
                             progress=False, device="cpu")
    finally:
        torch.set_default_device(None)
    assert all(s == "ok" for s in r.status.values()), r.status


def test_fused_layernorm_third_derivative_is_caught_and_plain_fixes_it():
    module, data, loss = case("transformer", seed=1)
    p = rodflow.Problem.from_module(module, data, loss=loss)  # HVPs are right: built without complaint
    with pytest.raises(RodflowError, match=r"third-derivative.*nn\.LayerNorm at enc\.norm1, enc\.norm2 "
                                           r"\(use rodflow\.models\.LayerNorm or from_module\(\.\.\., plain=True\)\)"):
        rodflow.simulate(p, lr=0.1, steps=2, methods=["gd", "central_flow"], progress=False)
    q = rodflow.Problem.from_module(module, data, loss=loss, plain=True)
    assert torch.equal(q.w0, p.w0)
    assert abs(float(q.loss(q.w0)) - float(p.loss(p.w0))) < 1e-12
    assert float((q.grad(q.w0) - p.grad(p.w0)).norm()) < 1e-12
    r = rodflow.simulate(q, lr=0.1, steps=2, methods=["gd", "central_flow"], progress=False)
    assert r.status["central_flow"] == "ok"


def test_plain_layers_keeps_the_parameter_layout():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2), nn.LayerNorm(2, elementwise_affine=False))
    plain = plain_layers(module)
    assert [n for n, _ in plain.named_parameters() if _.requires_grad] == [n for n, _ in module.named_parameters()]
    x = torch.randn(5, 3)
    assert torch.allclose(plain(x), module(x), atol=1e-6)
    assert type(plain_layers(nn.LayerNorm(3))) is models.LayerNorm


def test_from_module_bad_input_is_a_one_line_error():
    module, (x, y), _ = case("mlp")
    bad = [
        (lambda: rodflow.Problem.from_module(lambda z: z, (x, y)), "needs a torch.nn.Module"),
        (lambda: rodflow.Problem.from_module(module, x), r"data must be \(inputs, targets\)"),
        (lambda: rodflow.Problem.from_module(module, (x, y), loss="hinge"), "unknown loss 'hinge'"),
        (lambda: rodflow.Problem.from_module(module, (x, y.double()), loss="ce"), "integer class labels"),
        (lambda: rodflow.Problem.from_module(module, (x, y[:, None])), "do not match outputs"),
        (lambda: rodflow.Problem.from_module(module, (x[:, :4], y)), "the module raised RuntimeError"),
        (lambda: rodflow.Problem.from_module(module, (x, y), loss=nn.CrossEntropyLoss()), "one loss per example"),
        (lambda: rodflow.Problem.from_module(nn.Sequential(nn.Linear(6, 3), nn.Dropout(0.2)), (x, y)),
         r"layer 1 \(Dropout\) is in training mode.*module\.eval\(\)"),
        (lambda: rodflow.Problem.from_module(nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)), (x, y)),
         r"BatchNorm1d\) is in training mode.*chunk_size"),
        (lambda: rodflow.Problem.from_module(nn.Linear(6, 3).requires_grad_(False), (x, y)), "no trainable"),
    ]
    for build, match in bad:
        with pytest.raises(RodflowError, match=match) as info:
            build()
        assert "\n" not in str(info.value)
    # dropout with p=0 and BatchNorm in eval mode are fine
    rodflow.Problem.from_module(nn.Sequential(nn.Linear(6, 3), nn.Dropout(0.0)).double(), (x, y))
    rodflow.Problem.from_module(nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)).double().eval(), (x, y))
