import torch
from autograder.api import Ref, assert_close, assert_number

def test_add(sub):
    assert_number(sub.call("add", 1, 2), 3)

def test_add__tensor(sub, device):
    a = torch.randn(3, dtype=torch.float64)
    assert_close(sub.call("add", a, a), 2 * a)

def test_lin(sub):
    w = torch.randn(4, dtype=torch.float64)
    sub.new("Lin", 4, keep="m", state_dict={"w": w}, to_dtype=torch.float64)
    x = torch.randn(4, dtype=torch.float64)
    r = sub.run("@m", (x,), grad_wrt=[0], param_grads_of="m")
    assert_close(r.value, (w * x).sum())
    assert_close(r.grads[0], w)
    assert_close(r.param_grads["w"], x)
    assert_close(sub.state_dict("m")["w"], w)
