"""The reference's one checking layer (reference/_checks.py): one rule per kind of argument.

Before this layer the reference had 19 near-identical validators that disagreed (a flag
given as ``np.bool_`` was accepted by ``repvgg`` and refused by ``repopt``). These tests
pin the single rule for every module: flags are ``bool`` or ``np.bool_`` (never 0/1),
options are strings from a fixed tuple, and ``@checked`` runs a validator before the
formula and keeps the formula's signature and docstring.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from repspec.reference import _checks, qat, quant, repopt, repopt_sgd, repvgg
from repspec.reference.kmeans import kmeans_1d_optimal
from repspec.reference.oabn import oabn_eval
from repspec.reference.optim import sgd_step


def _flag_calls():
    """``name -> call(flag)`` for a public entry point of each module that takes a flag."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    ones = np.ones(1)
    rv_block = repvgg.RepVGGBlock(1, 1)
    rv_params = rv_block.init_params(np.random.default_rng(0))
    qa_block = repvgg.QARepVGGBlock(1, 1)
    ro_block = repopt.RepOptTargetBlock(1, 1)
    ro_params = ro_block.init_params(np.random.default_rng(0))
    return {
        "quant.weight_qparams(per_channel)": lambda f: quant.weight_qparams(np.ones((2, 2)), 4, f),
        "qat.UniformWeightQuantizer(per_channel)": lambda f: qat.UniformWeightQuantizer(4, f),
        "repvgg.RepVGGBlock.forward(training)":
            lambda f: rv_block.forward(rv_params, rv_block.init_buffers(), x, training=f),
        "repvgg.fuse_qarepvgg_block(fold_post_bn)": lambda f: repvgg.fuse_qarepvgg_block(
            qa_block.init_params(np.random.default_rng(0)), qa_block.init_buffers(), in_channels=1, out_channels=1,
            stride=1, fold_post_bn=f),
        "repopt.RepOptTargetBlock.forward(training)":
            lambda f: ro_block.forward(ro_params, ro_block.init_buffers(), x, training=f),
        "repopt_sgd.reinit_target_kernel(use_identity_scales)": lambda f: repopt_sgd.reinit_target_kernel(
            ones, ones, ones, in_channels=1, rng=np.random.default_rng(0), use_identity_scales=f),
        "optim.sgd_step(nesterov)": lambda f: sgd_step(ones, ones, lr=0.1, momentum=0.9, nesterov=f),
    }


@pytest.mark.parametrize("name", sorted(_flag_calls()))
def test_flags_accept_bool_and_numpy_bool_everywhere(name):
    call = _flag_calls()[name]
    for flag in (True, False, np.bool_(True), np.bool_(False)):
        call(flag)  # accepted
    arg = name[name.index("(") + 1:-1]
    for bad in (1, 0, "yes", None, np.array([True])):
        with pytest.raises(TypeError, match=f"{arg} must be a bool"):
            call(bad)


def test_options_are_strings_from_a_fixed_tuple():
    with pytest.raises(ValueError, match=r"method must be one of \('quadratic', 'divide_and_conquer'\)"):
        kmeans_1d_optimal(np.arange(5.0), 2, method="fast")
    with pytest.raises(ValueError, match="identity must be one of"):
        repopt_sgd.grad_mult_mask(np.ones(2), np.ones(2), 2, identity=None)
    with pytest.raises(ValueError, match="gradient must be one of"):
        _checks.check_gradient_mode("sign")


def test_checked_validates_before_the_formula_and_keeps_its_face():
    calls = []

    def formula_args(a, b):
        return dict(a=_checks.check_int(a, "a", min_value=0), b=_checks.check_real(b, "b"))

    @_checks.checked(formula_args)
    def formula(a, b=2.0):
        """``a·b``"""
        calls.append((a, b))
        return a * b

    assert formula(3) == 6.0 and formula(a=2, b=np.float64(0.5)) == 1.0
    assert formula.__doc__ == "``a·b``" and formula.__name__ == "formula"
    assert list(inspect.signature(formula).parameters) == ["a", "b"]
    with pytest.raises(ValueError, match="a must be >= 0"):
        formula(-1)
    with pytest.raises(TypeError, match="b must be a real number"):
        formula(1, True)
    assert calls == [(3, 2.0), (2, 0.5)], "the formula must not run on rejected input"
    assert formula.formula(-1, 1) == -1  # the unchecked formula stays reachable


def test_public_formulas_keep_their_signatures():
    """``@checked`` must not hide a signature callers (conformance, torch interop, docs) rely on."""
    assert list(inspect.signature(sgd_step).parameters) == [
        "param", "grad", "momentum_buffer", "lr", "momentum", "dampening", "nesterov", "weight_decay", "grad_mult_mask"]
    assert "threshold" in inspect.signature(oabn_eval).parameters
    assert list(inspect.signature(repopt_sgd.grad_mult_mask).parameters) == [
        "scale_conv", "scale_1x1", "in_channels", "identity", "exponent"]


def test_vectors_name_their_expected_length():
    with pytest.raises(ValueError, match=r"scale_1x1 must have shape \(3,\), got \(2,\)"):
        repopt_sgd.csla_equivalent_kernel(np.zeros((3, 3, 3, 3)), np.zeros((3, 3, 1, 1)), np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="scale_conv must have 1 dimensions"):
        _checks.check_vector(np.ones((2, 1)), "scale_conv")
