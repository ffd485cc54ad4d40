"""The clause registry: one entry per checkable SPEC clause (issue 6).

A :class:`Clause` is a SPEC clause id (``§2.fusion``), the section it comes from, what it
checks, the adapter methods it needs, a Hypothesis strategy that generates cases, a few
explicit edge cases, and a ``check(adapter, case, cmp)`` that runs the adapter on a case
and compares it with the reference (``repspec.reference``, the oracle) under explicit
tolerances. :func:`repspec.conformance.runner.run_conformance` drives them.

Cases are plain dicts (numbers, strings, NumPy arrays) built from small structural
choices plus an integer seed, so Hypothesis shrinks a failure towards small shapes, simple
options and seed 0, and the report can print the case itself.

Tolerances (:data:`TOLERANCES`, profile ``float64``; why in each clause's ``tolerance``):

- ``continuous`` rtol 1e-9, atol 1e-11: the same math in a different summation order
  (SPEC §6 "order 1e-9 relative");
- ``theorem``: two algebraically equal paths of the adapter itself, compared under a bound derived
  from the number of steps and the conditioning of the sum (``_theorem_bound``), ~1e-14 relative;
- ``quantized`` rtol 1e-12, atol 0: a fake-quantized value is ``code·scale``; the code must be
  the reference's exactly (one code off is a relative error ≥ 2^-16), the scale may differ
  by an ulp or two;
- ``tie_eps`` 1e-9: a value whose ``x/scale`` lies within ``tie_eps·max(1, |x/scale|)`` of a
  rounding tie (or of a k-means midpoint / STE range end) in a case built from *non-dyadic*
  numbers may go either way (SPEC §6). Cases built from dyadic numbers (power-of-two scales)
  are exact in any correct float64 port, so there ties are compared exactly — that is where
  "round half to even" and "a midpoint goes to the lower centroid" are checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from hypothesis import strategies as st

from repspec.core.vocabulary import IDENTITY_MODES, OABN_GRADIENTS
from repspec.reference import kmeans as ref_kmeans
from repspec.reference import oabn as ref_oabn
from repspec.reference import optim as ref_optim
from repspec.reference import quant as ref_quant
from repspec.reference import repopt as ref_repopt
from repspec.reference import repvgg as ref_repvgg
from repspec.reference.network import train_step

from .adapter import NotProvided, OABNResult, TrainIterationResult, BlockSpec, NetworkSpec, SGDSpec

__all__ = [
    "Tol",
    "TOLERANCES",
    "Clause",
    "CLAUSES",
    "get_clause",
    "clause_ids",
    "Mismatch",
    "AdapterRaised",
    "Ambiguous",
    "Checker",
]

INF = float("inf")


# ------------------------------------------------------------------------ tolerances


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float
    reason: str

    def __str__(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g}"


TOLERANCES: dict[str, dict[str, Any]] = {
    "float64": {
        "continuous": Tol(1e-9, 1e-11, "SPEC §6: float64, same math in a different summation order"),
        "quantized": Tol(1e-12, 0.0, "a discrete result: exact up to an ulp-level rounding of the scale"),
        "tie_eps": 1e-9,
        "oabn_margin": 1e-6,
        "unit_roundoff": 2.0**-53,
    },
    # advisory: a float32 port (inputs are rounded to float32 by the port itself)
    "float32": {
        "continuous": Tol(1e-4, 1e-5, "float32 unit roundoff 6e-8, amplified by BN 1/sigma"),
        "quantized": Tol(1e-6, 1e-7, "float32 rounding of code·scale"),
        "tie_eps": 1e-5,
        "oabn_margin": 1e-3,
        "unit_roundoff": 2.0**-24,
    },
}


# -------------------------------------------------------------- failures and checks


class Mismatch(AssertionError):
    """The adapter's output disagrees with the reference (or violates the clause's property)."""

    def __init__(self, quantity: str, detail: str, *, max_abs: float | None = None, max_rel: float | None = None,
                 tol: Tol | None = None):
        self.quantity, self.detail, self.max_abs, self.max_rel, self.tol = quantity, detail, max_abs, max_rel, tol
        super().__init__(f"{quantity}: {detail}")


class AdapterRaised(Exception):
    """The adapter raised on a valid input (a conformance failure, not a harness error)."""

    def __init__(self, method: str, exc: BaseException, hint: str | None = None):
        self.method, self.exc, self.hint = method, exc, hint
        super().__init__(f"{method} raised {type(exc).__name__}: {exc}" + (f" — hint: {hint}" if hint else ""))


class Ambiguous(Exception):
    """The case lies within ``tie_eps`` of a decision boundary where the adapter disagrees: not compared."""


def _copy_tree(v):
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, Mapping):
        return {k: _copy_tree(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], np.ndarray):
        return type(v)(_copy_tree(x) for x in v)
    return v


def _same_tree(a, b) -> bool:
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    if isinstance(b, Mapping):
        return isinstance(a, Mapping) and set(a) == set(b) and all(_same_tree(a[k], b[k]) for k in b)
    return True


def call(adapter, method: str, *args, hint: str | None = None, **kwargs):
    """Call ``adapter.method`` on copies of the inputs; refuse mutation; wrap its exceptions.

    ``hint`` is appended to the failure message when the adapter raises (a known porting pitfall).
    """
    fn = getattr(adapter, method, None)
    if fn is None:
        raise NotProvided(method)
    c_args = [_copy_tree(a) for a in args]
    c_kwargs = {k: _copy_tree(v) for k, v in kwargs.items()}
    try:
        out = fn(*c_args, **c_kwargs)
    except NotProvided:
        raise
    except Exception as exc:  # noqa: BLE001 - any exception of the port is reported
        if hint is None and "num_batches_tracked" in str(exc):
            hint = ("buffers carry PyTorch's *.num_batches_tracked counters (0-d int64); a port that does not "
                    "model them drops them with repspec.conformance.adapter.without_num_batches_tracked(buffers) "
                    "(docs/porting.md, 'Protocol pitfalls')")
        raise AdapterRaised(method, exc, hint) from exc
    for i, (a, c) in enumerate(zip(args, c_args)):
        if not _same_tree(c, a):
            raise Mismatch(f"{method} input #{i}", "the adapter mutated its input (inputs must be left unchanged)")
    for k, v in kwargs.items():
        if not _same_tree(c_kwargs[k], v):
            raise Mismatch(f"{method} input {k!r}", "the adapter mutated its input (inputs must be left unchanged)")
    return out


def _as_f64(name: str, value) -> np.ndarray:
    if value is None:
        raise Mismatch(name, "got None, expected an array")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise Mismatch(name, f"cannot be read as a float64 array ({exc})") from None
    return arr


def _fmt_index(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")" if idx else "()"


FLOAT32_HINT = (". Every value the adapter returned is a float32 number (and the expected ones are not): the port "
                "computes in float32 — wrap third-party torch code in torch.set_default_dtype(torch.float64) "
                "(docs/porting.md, 'Protocol pitfalls')")


def _float32_hint(actual: np.ndarray, expected: np.ndarray, profile) -> str:
    """A hint when a float64-profile mismatch comes from a float32 computation (pitfall 4)."""
    if profile.get("unit_roundoff", 0.0) < 2.0**-40 and actual.size and np.all(np.isfinite(actual)):
        with np.errstate(over="ignore"):
            as32 = actual.astype(np.float32).astype(np.float64)
            exp32 = expected.astype(np.float32).astype(np.float64)
        if np.array_equal(as32, actual) and not np.array_equal(exp32, expected):
            return FLOAT32_HINT
    return ""


@dataclass
class ErrorStats:
    """The largest errors seen over every comparison of a clause run (passing ones included)."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    comparisons: int = 0

    def update(self, abs_err: float, rel_err: float) -> None:
        self.max_abs = max(self.max_abs, abs_err)
        self.max_rel = max(self.max_rel, rel_err)
        self.comparisons += 1


class Checker:
    """Comparisons for one case; every one updates the clause's :class:`ErrorStats`."""

    def __init__(self, profile: Mapping[str, Any], stats: ErrorStats):
        self.profile, self.stats = profile, stats

    def tol(self, kind: str) -> Tol:
        return self.profile[kind]

    @property
    def tie_eps(self) -> float:
        return self.profile["tie_eps"]

    def close(self, name: str, actual, expected, *, kind: str = "continuous", alternatives=(),
              ambiguous: np.ndarray | None = None) -> None:
        """``|actual − expected| ≤ atol + rtol·|expected|`` elementwise (NaN fails).

        Where ``ambiguous`` is True, matching any array of ``alternatives`` also passes
        (a value within ``tie_eps`` of a decision boundary, SPEC §6).
        """
        tol = self.tol(kind)
        exp = np.asarray(expected, dtype=np.float64)
        act = _as_f64(name, actual)
        if act.shape != exp.shape:
            raise Mismatch(name, f"shape {act.shape} != expected {exp.shape}")
        if exp.size == 0:
            return
        err = np.abs(act - exp)
        err = np.where(np.isnan(err), np.inf, err)
        bound = tol.atol + tol.rtol * np.abs(exp)
        ok = err <= bound
        best = err
        if ambiguous is not None and alternatives:
            amb = np.broadcast_to(np.asarray(ambiguous, dtype=bool), exp.shape)
            for alt in alternatives:
                alt = np.broadcast_to(np.asarray(alt, dtype=np.float64), exp.shape)
                e2 = np.abs(act - alt)
                e2 = np.where(np.isnan(e2), np.inf, e2)
                hit = amb & (e2 <= tol.atol + tol.rtol * np.abs(alt))
                ok = ok | hit
                best = np.where(hit, np.minimum(best, e2), best)
        scale = np.abs(exp)
        # relative error where the relative tolerance governs (|expected| ≥ atol/rtol), else it means nothing
        relevant = scale > (tol.atol / tol.rtol if tol.rtol > 0 else 0.0)
        rel = np.where(relevant, best / np.where(relevant, scale, 1.0), 0.0)
        max_abs = float(np.max(best))
        max_rel = float(np.max(rel))
        if np.all(ok):
            self.stats.update(max_abs, max_rel)
            return
        bad = ~ok
        ratio = np.where(bad, err / np.maximum(bound, 1e-300), -1.0)
        idx = np.unravel_index(int(np.argmax(ratio)), exp.shape)
        raise Mismatch(
            name,
            f"max abs err {max_abs:.3e}, max rel err {max_rel:.3e} ({tol}; {tol.reason}); worst at index "
            f"{_fmt_index(idx)}: actual {float(act[idx])!r} vs expected {float(exp[idx])!r}; "
            f"{int(bad.sum())}/{bad.size} "
            f"elements off" + _float32_hint(act, exp, self.profile),
            max_abs=max_abs, max_rel=max_rel, tol=tol)

    def within(self, name: str, actual, expected, bound: np.ndarray, reason: str) -> None:
        """``|actual − expected| ≤ bound`` elementwise, for a bound derived from the case (NaN fails)."""
        exp = np.asarray(expected, dtype=np.float64)
        act = _as_f64(name, actual)
        if act.shape != exp.shape:
            raise Mismatch(name, f"shape {act.shape} != expected {exp.shape}")
        if exp.size == 0:
            return
        bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), exp.shape)
        err = np.abs(act - exp)
        err = np.where(np.isnan(err), np.inf, err)
        scale = np.abs(exp)
        rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1.0), np.where(err > 0, np.inf, 0.0))
        max_abs, max_rel = float(np.max(err)), float(np.max(rel))
        ok = err <= bound
        if np.all(ok):
            self.stats.update(max_abs, max_rel)
            return
        ratio = np.where(~ok, err / np.maximum(bound, 1e-300), -1.0)
        idx = np.unravel_index(int(np.argmax(ratio)), exp.shape)
        raise Mismatch(
            name,
            f"max abs err {max_abs:.3e}, max rel err {max_rel:.3e}; worst at index {_fmt_index(idx)}: actual "
            f"{float(act[idx])!r} vs expected {float(exp[idx])!r}, error {float(err[idx]):.3e} > bound "
            f"{float(bound[idx]):.3e} ({reason}); {int((~ok).sum())}/{ok.size} elements off",
            max_abs=max_abs, max_rel=max_rel)

    def equal(self, name: str, actual, expected) -> None:
        """Exact equality of discrete outputs (labels, presence of a buffer …)."""
        exp = np.asarray(expected)
        try:
            act = np.asarray(actual)
        except (TypeError, ValueError) as exc:
            raise Mismatch(name, f"cannot be read as an array ({exc})") from None
        if act.shape != exp.shape:
            raise Mismatch(name, f"shape {act.shape} != expected {exp.shape}")
        if act.dtype.kind in "fc" and not np.all(np.isfinite(act)):
            raise Mismatch(name, "contains NaN/Inf where exact values were expected")
        diff = act != exp
        if np.any(diff):
            idx = np.unravel_index(int(np.argmax(diff)), exp.shape) if exp.ndim else ()
            raise Mismatch(name, f"must equal the reference exactly; {int(np.sum(diff))}/{diff.size} differ, "
                                 f"first at index {_fmt_index(idx)}: actual {act[idx].item()!r} vs expected "
                                 f"{exp[idx].item()!r}",
                           max_abs=float(np.max(np.abs(act.astype(np.float64) - exp.astype(np.float64)))),
                           max_rel=None)
        self.stats.update(0.0, 0.0)

    def same_keys(self, name: str, actual, expected) -> None:
        if not isinstance(actual, Mapping):
            raise Mismatch(name, f"must be a mapping name -> array, got {type(actual).__name__}")
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        if missing or extra:
            raise Mismatch(name, f"keys differ from the reference: missing {missing}, unexpected {extra}")

    def close_tree(self, name: str, actual, expected, **kw) -> None:
        self.same_keys(name, actual, expected)
        for k in expected:
            self.close(f"{name}[{k!r}]", actual[k], expected[k], **kw)


# -------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Clause:
    """One checkable SPEC clause."""

    id: str  # "§2.fusion"
    section: str  # "§2"
    title: str
    checks: str  # what it checks (one paragraph)
    tolerance: str  # the tolerance and why
    methods: tuple[str, ...]  # adapter methods it needs
    strategy: Callable[[], st.SearchStrategy]  # builds the case strategy (lazily)
    check: Callable[[Any, dict, Checker], None]
    examples: tuple[Callable[[], dict], ...] = ()  # explicit edge cases, run first
    budget: float = 1.0  # fraction of max_examples this clause runs (expensive clauses < 1)
    plausible_note: str = ""
    extra: dict = field(default_factory=dict)


CLAUSES: dict[str, Clause] = {}


def _register(clause: Clause) -> Clause:
    CLAUSES[clause.id] = clause
    return clause


def clause_ids() -> tuple[str, ...]:
    return tuple(CLAUSES)


def get_clause(clause_id: str) -> Clause:
    """Look up a clause by id; the leading ``§`` is optional (``3.grad-mult`` works)."""
    key = clause_id.strip()
    if not key.startswith("§"):
        key = "§" + key
    if key not in CLAUSES:
        raise KeyError(f"unknown clause {clause_id!r}; known: {', '.join(CLAUSES)}")
    return CLAUSES[key]


def special(label: str, needs: str | None = None):
    """Mark a hand-written special-value case: ``label`` names it in reports; ``needs`` names the
    optional feature it exercises (e.g. ``"OABN"``), None for a case every port offering the clause
    must run. Declining a ``needs=None`` case fails the clause; declining a feature case fails
    only under ``--strict`` (docs/porting.md, "Declining an option")."""

    def mark(make):
        make.label, make.needs = label, needs
        return make

    return mark


def with_num_batches_tracked(buffers: Mapping[str, np.ndarray]) -> dict:
    """``buffers`` plus a ``num_batches_tracked`` (0-d int64, 0) next to every BN's ``running_mean``,
    as in a PyTorch ``state_dict``, so an adapter can ``load_state_dict(strict=True)``. The SPEC
    does not model the counter: it is handed in, never compared."""
    out = dict(buffers)
    for k in buffers:
        if k.endswith("running_mean"):
            out[k[: -len("running_mean")] + "num_batches_tracked"] = np.array(0, dtype=np.int64)
    return out


def _without_num_batches_tracked(buffers):
    if not isinstance(buffers, Mapping):
        return buffers
    return {k: v for k, v in buffers.items() if not str(k).endswith("num_batches_tracked")}


# ---------------------------------------------------------------- shared strategies

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _signed(rng, size, lo: float, hi: float) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size) * rng.uniform(lo, hi, size)


def _bn_params(rng, shapes: Mapping[str, tuple], big_gamma: bool = False) -> dict:
    """Random branch parameters: conv kernels N(0, 1); BN γ with random sign, |γ| ∈ [0.2, 3]; β ~ N(0, 0.5)."""
    out = {}
    for k, shape in shapes.items():
        if len(shape) == 4:
            out[k] = rng.standard_normal(shape)
        elif k.endswith("weight"):
            out[k] = _signed(rng, shape, 0.2, 6.0 if big_gamma else 3.0)
        else:
            out[k] = rng.normal(0.0, 0.5, shape)
    return out


def _bn_buffers(rng, shapes: Mapping[str, tuple]) -> dict:
    return {k: rng.normal(0.0, 0.5, s) if k.endswith("running_mean") else rng.uniform(0.05, 3.0, s)
            for k, s in shapes.items()}


@st.composite
def _sgd_hparams(draw, *, allow_decay: bool = True) -> dict:
    """lr, momentum, dampening, nesterov, weight_decay in torch.optim.SGD's domain (nesterov 1 in 4)."""
    momentum = draw(st.sampled_from([0.0, 0.9, 0.5]))
    nesterov = draw(st.sampled_from([False, False, False, True])) if momentum > 0 else False
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.5, 0.1]))
    wd = draw(st.sampled_from([0.0, 5e-2, 1e-4])) if allow_decay else 0.0
    return dict(lr=draw(st.sampled_from([0.1, 0.01, 0.5])), momentum=momentum, dampening=dampening,
                nesterov=nesterov, weight_decay=wd)


# ============================================================ §2 RepVGG fusion


@st.composite
def _repvgg_fusion_cases(draw) -> dict:
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = cin if draw(st.booleans()) else groups * draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    if draw(st.booleans()):  # half the cases have an identity branch
        cout, stride = cin, 1
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    # OABN (a finite threshold) is an optional feature: one case in three, so that a port without it
    # declines a minority of the clause
    threshold = draw(st.sampled_from([1.0, 0.5, 3.0])) if draw(st.integers(0, 2)) == 2 else INF
    dead = draw(st.booleans())
    seed = draw(seeds)
    rng = _rng(seed)
    params = _bn_params(rng, ref_repvgg.repvgg_param_shapes(cin, cout, stride, groups))
    buffers = _bn_buffers(rng, ref_repvgg.repvgg_buffer_shapes(cin, cout, stride, groups))
    if dead and "rbr_identity.running_var" in buffers:  # a dead post-ReLU channel: σ0² = 0, t0 ≈ γ0/sqrt(eps)
        v = buffers["rbr_identity.running_var"]
        v[rng.integers(0, v.size)] = 0.0
    return dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups, eps=eps, oabn_threshold=threshold,
                seed=seed, params=params, buffers=buffers)


def _check_repvgg_fusion(adapter, case, cmp: Checker) -> None:
    kw = {k: case[k] for k in ("in_channels", "out_channels", "stride", "groups", "eps", "oabn_threshold")}
    out = call(adapter, "fuse_repvgg_block", case["params"], with_num_batches_tracked(case["buffers"]), **kw)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("fuse_repvgg_block", f"must return (K, b), got {type(out).__name__}")
    k_ref, b_ref = ref_repvgg.fuse_repvgg_block(case["params"], case["buffers"], **kw)
    cmp.close("K", out[0], k_ref)
    cmp.close("b", out[1], b_ref)


def _dead_identity_case(threshold: float) -> dict:
    rng = _rng(0)
    params = _bn_params(rng, ref_repvgg.repvgg_param_shapes(2, 2, 1, 1))
    buffers = _bn_buffers(rng, ref_repvgg.repvgg_buffer_shapes(2, 2, 1, 1))
    buffers["rbr_identity.running_var"][0] = 0.0
    buffers["rbr_1x1.bn.running_var"][1] = 0.0  # a dead channel in a conv branch too
    params["rbr_identity.weight"][:] = [4.0, -0.3]
    return dict(in_channels=2, out_channels=2, stride=1, groups=1, eps=1e-5, oabn_threshold=threshold, seed=0,
                params=params, buffers=buffers)


@special("dead channels (running variance 0), plain BN")
def _fusion_example_dead_identity_plain() -> dict:
    return _dead_identity_case(INF)


@special("dead identity channel clipped by OABN (s = 1)", needs="OABN")
def _fusion_example_dead_identity() -> dict:
    return _dead_identity_case(1.0)


@special("grouped block with identity (groups 2)")
def _fusion_example_grouped() -> dict:
    rng = _rng(1)
    params = _bn_params(rng, ref_repvgg.repvgg_param_shapes(4, 4, 1, 2))
    buffers = _bn_buffers(rng, ref_repvgg.repvgg_buffer_shapes(4, 4, 1, 2))
    return dict(in_channels=4, out_channels=4, stride=1, groups=2, eps=1e-5, oabn_threshold=INF, seed=1,
                params=params, buffers=buffers)


_register(Clause(
    id="§2.fusion", section="§2", title="RepVGG branch fusion (eval-mode BN, OABN-clipped identity)",
    checks="K = t3·K3 + t1·pad(K1) + t̃0·I_c, b = Σ(β − μ·t) against reference.repvgg.fuse_repvgg_block: "
           "groups 1/2, strides 1/2, with and without identity, dead channels (σ² = 0, t0 ≈ 316) with plain BN "
           "and with OABN, OABN thresholds s ∈ {∞, 0.5, 1, 3} (t̃0 = clip(t0, −s, s); a finite s in one case "
           "in three). The adapter gets a PyTorch-style buffers dict (num_batches_tracked included).",
    tolerance="continuous (rtol 1e-9, atol 1e-11): products and sums of float64 values in another order.",
    methods=("fuse_repvgg_block",), strategy=_repvgg_fusion_cases, check=_check_repvgg_fusion,
    examples=(_fusion_example_dead_identity_plain, _fusion_example_grouped, _fusion_example_dead_identity),
))


@st.composite
def _qarepvgg_fusion_cases(draw) -> dict:
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = cin if draw(st.booleans()) else groups * draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    fold = draw(st.booleans())
    seed = draw(seeds)
    rng = _rng(seed)
    params = _bn_params(rng, ref_repvgg.qarepvgg_param_shapes(cin, cout, stride, groups))
    buffers = _bn_buffers(rng, ref_repvgg.qarepvgg_buffer_shapes(cin, cout, stride, groups))
    return dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups, eps=eps, fold_post_bn=fold,
                seed=seed, params=params, buffers=buffers)


def _check_qarepvgg_fusion(adapter, case, cmp: Checker) -> None:
    kw = {k: case[k] for k in ("in_channels", "out_channels", "stride", "groups", "eps", "fold_post_bn")}
    out = call(adapter, "fuse_qarepvgg_block", case["params"], with_num_batches_tracked(case["buffers"]), **kw)
    ref = ref_repvgg.fuse_qarepvgg_block(case["params"], case["buffers"], **kw)
    if not isinstance(out, (tuple, list)) or len(out) != len(ref):
        want = "(K, b)" if case["fold_post_bn"] else "(K, b, post_bn)"
        raise Mismatch("fuse_qarepvgg_block", f"must return {want}, got {type(out).__name__} of length "
                                              f"{len(out) if isinstance(out, (tuple, list)) else '?'}")
    cmp.close("K", out[0], ref[0])
    cmp.close("b", out[1], ref[1])
    if not case["fold_post_bn"]:
        cmp.close_tree("post_bn", _without_num_batches_tracked(out[2]), ref[2])


_register(Clause(
    id="§2.qarepvgg-fusion", section="§2", title="QARepVGG fusion (post BN folded or kept)",
    checks="K = t3·K3 + pad(K1) + I_c, b = β3 − μ3·t3, then with fold_post_bn K ← tpost·K, "
           "b ← tpost·(b − μpost) + βpost (else the post BN is returned unchanged), against "
           "reference.repvgg.fuse_qarepvgg_block; groups 1/2, strides 1/2, with and without identity.",
    tolerance="continuous (rtol 1e-9, atol 1e-11).",
    methods=("fuse_qarepvgg_block",), strategy=_qarepvgg_fusion_cases, check=_check_qarepvgg_fusion,
))


# ============================================================ §3 Grad Mult


@st.composite
def _grad_mult_cases(draw) -> dict:
    identity = draw(st.sampled_from(["trainable", "none", "constant"]))
    o = draw(st.integers(1, 4))
    i = o if identity != "none" else draw(st.integers(1, 4))
    exponent = draw(st.sampled_from([2, 2, 1]))  # 1 (AdamW) is optional: one case in three
    mixed_signs = draw(st.booleans())
    seed = draw(seeds)
    rng = _rng(seed)
    a3, a1 = rng.uniform(0.2, 2.0, o), rng.uniform(0.2, 2.0, o)  # a different value in every channel
    if mixed_signs:
        a3, a1 = a3 * rng.choice([-1.0, 1.0], o), a1 * rng.choice([-1.0, 1.0], o)
    return dict(out_channels=o, in_channels=i, identity=identity, exponent=exponent, seed=seed, scale_conv=a3,
                scale_1x1=a1)


def _check_grad_mult(adapter, case, cmp: Checker) -> None:
    args = (case["scale_conv"], case["scale_1x1"], case["in_channels"])
    kw = dict(identity=case["identity"], exponent=case["exponent"])
    m = call(adapter, "grad_mult_mask", *args, **kw)
    try:
        cmp.close("M", m, ref_repopt.grad_mult_mask(*args, **kw))
    except Mismatch as exc:
        swapped = ref_repopt.grad_mult_mask(case["scale_1x1"], case["scale_conv"], case["in_channels"], **kw)
        try:
            Checker(cmp.profile, ErrorStats()).close("M", m, swapped)
        except Mismatch:
            raise exc from None
        raise Mismatch(exc.quantity, exc.detail + ". The adapter's mask is the one for the scales SWAPPED: "
                       "grad_mult_mask takes (scale_conv, scale_1x1), the reverse of the original code's "
                       "(identity, 1x1, conv) tuples (docs/porting.md, 'Protocol pitfalls')",
                       max_abs=exc.max_abs, max_rel=exc.max_rel, tol=exc.tol) from None


@special("trainable identity, different scale per channel")
def _grad_mult_example() -> dict:
    return dict(out_channels=2, in_channels=2, identity="trainable", exponent=2, seed=0,
                scale_conv=np.array([2.0, 0.5]), scale_1x1=np.array([1.0, 3.0]))


@special("O ≠ I, no identity")
def _grad_mult_example_nonsquare() -> dict:
    return dict(out_channels=3, in_channels=2, identity="none", exponent=2, seed=0,
                scale_conv=np.array([2.0, 0.5, 1.5]), scale_1x1=np.array([1.0, 3.0, 0.25]))


_register(Clause(
    id="§3.grad-mult", section="§3", title="Grad Mult mask",
    checks="M[o,i,p,q] = α3[o]^e + [p=q=1]·α1[o]^e + [p=q=1, o=i, identity='trainable']·1 against "
           "reference.repopt.grad_mult_mask, with a different scale in every output channel, O ≠ I "
           "(no identity), identity trainable/constant/none, exponent 2 (SGD) and 1 (AdamW), mixed signs.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): squares and sums of the scales.",
    methods=("grad_mult_mask",), strategy=_grad_mult_cases, check=_check_grad_mult,
    examples=(_grad_mult_example, _grad_mult_example_nonsquare),
))


# ============================================================ §3 RepOpt-SGD step


#: parameter shapes an optimizer step meets: 3x3 kernels (maskable), 1x1 kernels, (O,) vectors (BN, CSLA
#: scales, biases), (K, C) head weights, 0-d scalars — §3.theorem steps the 1x1 kernels and (O,) scales
_STEP_SHAPES = ("3x3", "1x1", "vector", "matrix", "scalar")

_ANY_SHAPE_HINT = ("repopt_sgd_step must accept a parameter of any shape: §3.theorem and a training step also "
                   "step 1x1 kernels (O, I, 1, 1), (O,) vectors and scalars, with grad_mult_mask None "
                   "(docs/porting.md, 'Protocol pitfalls')")


@st.composite
def _sgd_step_cases(draw) -> dict:
    o, i = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(_STEP_SHAPES))
    shape = {"3x3": (o, i, 3, 3), "1x1": (o, i, 1, 1), "vector": (o,), "matrix": (o, i), "scalar": ()}[kind]
    hp = draw(_sgd_hparams())
    mask_kind = draw(st.sampled_from(["grad_mult", "grad_mult", "none"])) if kind == "3x3" else "none"
    first = draw(st.booleans()) or hp["momentum"] == 0
    seed = draw(seeds)
    rng = _rng(seed)
    mask = None
    if mask_kind == "grad_mult":
        mask = ref_repopt.grad_mult_mask(rng.uniform(0.3, 2.0, o), rng.uniform(0.3, 2.0, o), i,
                                         identity="trainable" if i == o else "none")
    return dict(shape=shape, **hp, first_step=first, seed=seed, param=np.asarray(rng.standard_normal(shape)),
                grad=np.asarray(rng.standard_normal(shape)),
                momentum_buffer=None if first else np.asarray(rng.standard_normal(shape)), grad_mult_mask=mask)


_HP_KEYS = ("lr", "momentum", "dampening", "nesterov", "weight_decay")


def _check_sgd_step(adapter, case, cmp: Checker) -> None:
    hp = {k: case[k] for k in _HP_KEYS}
    hint = _ANY_SHAPE_HINT if np.shape(case["param"]) != np.shape(case["param"])[:2] + (3, 3) else None
    out = call(adapter, "repopt_sgd_step", case["param"], case["grad"], case["momentum_buffer"],
               grad_mult_mask=case["grad_mult_mask"], hint=hint, **hp)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("repopt_sgd_step", f"must return (new_param, new_buffer), got {type(out).__name__}")
    p_ref, buf_ref = ref_optim.sgd_step(case["param"], case["grad"], case["momentum_buffer"],
                                        grad_mult_mask=case["grad_mult_mask"], **hp)
    cmp.close("new_param", out[0], p_ref)
    if buf_ref is None:
        if out[1] is not None:
            raise Mismatch("new_buffer", "must be None when momentum == 0 (no buffer exists, as in torch)")
    else:
        if out[1] is None:
            raise Mismatch("new_buffer", "is None but momentum > 0 (the first step creates buf = d)")
        cmp.close("new_buffer", out[1], buf_ref)


@special("first step, momentum, dampening (the buffer is NOT dampened)")
def _sgd_example_first_step_dampened() -> dict:
    rng = _rng(0)
    mask = ref_repopt.grad_mult_mask(np.array([1.5]), np.array([0.7]), 1, identity="trainable")
    return dict(shape=(1, 1, 3, 3), lr=0.1, momentum=0.9, dampening=0.5, nesterov=False, weight_decay=0.0,
                first_step=True, seed=0, param=rng.standard_normal((1, 1, 3, 3)),
                grad=rng.standard_normal((1, 1, 3, 3)), momentum_buffer=None, grad_mult_mask=mask)


@special("masked parameter with weight decay (decay NOT masked)")
def _sgd_example_masked_decay() -> dict:
    rng = _rng(1)
    mask = ref_repopt.grad_mult_mask(np.array([1.5]), np.array([0.7]), 1, identity="none")
    return dict(shape=(1, 1, 3, 3), lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.05,
                first_step=True, seed=1, param=rng.standard_normal((1, 1, 3, 3)),
                grad=rng.standard_normal((1, 1, 3, 3)), momentum_buffer=None, grad_mult_mask=mask)


@special("(O,) vector, later nesterov step with decay (any shape)")
def _sgd_example_vector_later_step() -> dict:
    rng = _rng(2)
    return dict(shape=(3,), lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.05,
                first_step=False, seed=2, param=rng.standard_normal(3), grad=rng.standard_normal(3),
                momentum_buffer=rng.standard_normal(3), grad_mult_mask=None)


_register(Clause(
    id="§3.repopt-sgd-step", section="§3", title="one RepOpt-SGD step (exact order)",
    checks="d = M⊙g → d = d + λ·W (decay NOT masked) → buf = d (first step, undampened) | μ·buf + (1−τ)·d → "
           "d = d + μ·buf (nesterov) | buf → W − lr·d, against reference.optim.sgd_step; masked 3x3 kernels "
           "and unmasked parameters of any shape (3x3, 1x1, (O,), (K, C), scalar), first and later steps, "
           "every torch.optim.SGD option combination; momentum 0 must return no buffer.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): a handful of float64 multiply-adds.",
    methods=("repopt_sgd_step",), strategy=_sgd_step_cases, check=_check_sgd_step,
    examples=(_sgd_example_first_step_dampened, _sgd_example_masked_decay, _sgd_example_vector_later_step),
))


# ============================================================ §3 the theorem


@st.composite
def _theorem_cases(draw) -> dict:
    identity = draw(st.sampled_from(["trainable", "none", "constant"]))
    o = draw(st.integers(1, 3))
    i = o if identity != "none" else draw(st.integers(1, 3))
    hp = draw(_sgd_hparams(allow_decay=identity != "constant"))
    steps = draw(st.integers(1, 3))
    seed = draw(seeds)
    rng = _rng(seed)
    d = rng.uniform(0.5, 1.5, o) if identity != "none" else None
    return dict(out_channels=o, in_channels=i, identity=identity, steps=steps, **hp, seed=seed,
                scale_conv=_signed(rng, o, 0.3, 1.5), scale_1x1=_signed(rng, o, 0.3, 1.5),
                conv_weight=rng.standard_normal((o, i, 3, 3)), conv_1x1_weight=rng.standard_normal((o, i, 1, 1)),
                scale_identity=d, grads=[rng.standard_normal((o, i, 3, 3)) for _ in range(steps)])


#: roundings per element on the longest path: composing W'_0 (4), then per step, on each of the two paths,
#: the pulled-back gradient (1), M⊙g (1), weight decay (2), momentum (3), nesterov (2), lr·d (1), W − lr·d (1)
#: and the recomposition α3·K3 + α1·pad(K1) + d (5) — 16 per path, 32 per step
_THEOREM_ROUNDINGS_0, _THEOREM_ROUNDINGS_PER_STEP = 4, 32


def _theorem_bound(u: float, steps: int, magnitudes) -> np.ndarray:
    """The round-off bound of the theorem comparison after ``steps`` steps (elementwise).

    Each rounding errs by at most ``u·|operand|``; with ``n = 4 + 32·steps`` roundings on the longest
    path, the standard bound (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1) is
    ``|W'_t − α3·K3_t − α1·pad(K1_t) − diag(d_t)| ≤ γ_n · Σ_s m_s``, ``γ_n = n·u/(1 − n·u)``, where
    ``m_s`` sums the *absolute values* of every term met at step ``s`` (the branches
    ``|α3|·|K3| + |α1|·|pad K1| + |d|``, ``|W'|``, the update ``lr·(|M|·|g| + λ·|W'| + (1 + μ)·|buf|)``
    and the branch buffers): a sum's condition number, so cancellation between the branches widens
    the bound where it must and nowhere else. For float64 and 1–3 steps that is ~1e-14 relative to
    the terms, instead of a flat 1e-9: a systematic 1e-12 relative error per step fails.
    """
    n = _THEOREM_ROUNDINGS_0 + _THEOREM_ROUNDINGS_PER_STEP * steps
    return (n * u / (1.0 - n * u)) * np.sum(magnitudes, axis=0)


def _check_theorem(adapter, case, cmp: Checker) -> None:
    hp = {k: case[k] for k in _HP_KEYS}
    a3, a1, identity = case["scale_conv"], case["scale_1x1"], case["identity"]
    u = cmp.profile["unit_roundoff"]
    mask = call(adapter, "grad_mult_mask", a3, a1, case["in_channels"], identity=identity, exponent=2)
    mask_abs = np.abs(_as_f64("M", mask))
    branches = {"conv.weight": case["conv_weight"], "conv_1x1.weight": case["conv_1x1_weight"]}
    d_const = None
    if identity == "trainable":
        branches["scale_identity.weight"] = case["scale_identity"]
    elif identity == "constant":
        d_const = case["scale_identity"]

    def w_of(br):
        d = br.get("scale_identity.weight", d_const)
        return ref_repopt.csla_equivalent_kernel(br["conv.weight"], br["conv_1x1.weight"], a3, a1, d)

    def abs_of(br):  # Σ |terms| of the composition, elementwise
        d = br.get("scale_identity.weight", d_const)
        return ref_repopt.csla_equivalent_kernel(np.abs(br["conv.weight"]), np.abs(br["conv_1x1.weight"]),
                                                 np.abs(a3), np.abs(a1), None if d is None else np.abs(d))

    w = w_of(branches)  # W'_0
    magnitudes = [abs_of(branches) + np.abs(w)]
    bufs = {k: None for k in branches}
    buf_w = None
    lr, mu, lam = hp["lr"], hp["momentum"], hp["weight_decay"]
    for t, g in enumerate(case["grads"], start=1):
        d = branches.get("scale_identity.weight", d_const)
        pulled = ref_repopt.csla_equivalent_kernel_backward(g, branches["conv.weight"], branches["conv_1x1.weight"],
                                                            a3, a1, d)
        before = abs_of(branches)
        new = {}
        for k, theta in branches.items():  # the CSLA side: plain SGD on every branch (mask None)
            out = call(adapter, "repopt_sgd_step", theta, pulled[k], bufs[k], grad_mult_mask=None,
                       hint=_ANY_SHAPE_HINT if k != "conv.weight" else None, **hp)
            new[k], bufs[k] = _as_f64(f"CSLA {k} after step {t}", out[0]), out[1]
        branches = new
        w_prev = np.abs(w)
        out = call(adapter, "repopt_sgd_step", w, g, buf_w, grad_mult_mask=mask, **hp)  # target: RepOpt-SGD
        w, buf_w = _as_f64(f"W' after step {t}", out[0]), out[1]
        m = abs_of(branches) + np.abs(w) + lr * (mask_abs * np.abs(g) + lam * (w_prev + before))
        if mu != 0 and buf_w is not None and all(b is not None for b in bufs.values()):
            b_abs = {k: np.abs(_as_f64(f"CSLA {k} momentum buffer after step {t}", b)) for k, b in bufs.items()}
            m = m + lr * (1.0 + mu) * (np.abs(_as_f64(f"W' momentum buffer after step {t}", buf_w)) + abs_of(b_abs))
        magnitudes.append(m)
        cmp.within(f"W' after step {t} (target, RepOpt-SGD) vs α3·K3 + α1·pad(K1) + diag(d)·I_c (CSLA, SGD)",
                   w, w_of(branches), _theorem_bound(u, t, magnitudes),
                   f"round-off bound γ_n·Σ|terms| with n = {_THEOREM_ROUNDINGS_0} + "
                   f"{_THEOREM_ROUNDINGS_PER_STEP}·{t} roundings, u = {u:.3g}")


@special("trainable identity, weight decay, mixed-sign 1x1 scale")
def _theorem_example() -> dict:
    rng = _rng(0)
    return dict(out_channels=2, in_channels=2, identity="trainable", steps=1, lr=0.1, momentum=0.0, dampening=0.0,
                nesterov=False, weight_decay=0.05, seed=0, scale_conv=np.array([1.2, 0.6]),
                scale_1x1=np.array([0.5, -0.9]), conv_weight=rng.standard_normal((2, 2, 3, 3)),
                conv_1x1_weight=rng.standard_normal((2, 2, 1, 1)), scale_identity=np.array([1.0, 0.8]),
                grads=[rng.standard_normal((2, 2, 3, 3))])


_register(Clause(
    id="§3.theorem", section="§3", title="RepOpt theorem (CSLA + SGD ≡ target + RepOpt-SGD)",
    checks="A property of the adapter itself: from W'_0 = α3·K3 + α1·pad(K1) + diag(d)·I_c, plain SGD "
           "(the adapter's repopt_sgd_step with mask None) on K3, K1 and a trainable d — pulled-back "
           "gradients α3·g, α1·g_center, g_diag — and RepOpt-SGD on W' with the adapter's own grad_mult_mask "
           "keep α3·K3_t + α1·pad(K1_t) + diag(d_t)·I_c == W'_t for 1–3 steps; identity trainable, none, and "
           "constant (then λ = 0, no +1), every SGD option, mixed-sign scales.",
    tolerance="derived round-off bound γ_n·Σ_s m_s (n = 4 + 32·t roundings after t steps, u = 2^-53, m_s the "
              "sum of the absolute values of every term at step s: the sum's conditioning), about 1e-14 relative "
              "to the terms; the reference measures ~1e-16. A systematic 1e-12 relative error per step fails.",
    methods=("grad_mult_mask", "repopt_sgd_step"), strategy=_theorem_cases, check=_check_theorem,
    examples=(_theorem_example,),
))


# ============================================================ §4 OABN


def _oabn_margin(case) -> float:
    """min over channels of | |t| − s | / s with batch statistics (∞ for s = ∞)."""
    s = case["threshold"]
    if math.isinf(s):
        return INF
    var = case["x"].var(axis=(0, 2, 3))
    t = case["gamma"] / np.sqrt(var + case["eps"])
    return float(np.min(np.abs(np.abs(t) - s)) / s)


@st.composite
def _oabn_cases(draw) -> dict:
    n, c = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    threshold = draw(st.sampled_from([1.0, INF, 0.5, 2.0]))
    gradient = draw(st.sampled_from(OABN_GRADIENTS))
    momentum = draw(st.sampled_from([0.1, 1.0, 0.5]))
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    seed = draw(seeds)
    rng = _rng(seed)
    spread = rng.choice([0.05, 0.3, 1.0, 3.0], c)  # small spreads give huge t = γ/σ: clipped channels
    x = rng.standard_normal((n, c, h, w)) * spread[None, :, None, None] + rng.normal(0, 2, c)[None, :, None, None]
    case = dict(shape=(n, c, h, w), threshold=threshold, gradient=gradient, momentum=momentum, eps=eps, seed=seed,
                x=x, gamma=_signed(rng, c, 0.1, 3.0), beta=rng.normal(0, 0.5, c), running_mean=rng.normal(0, 0.5, c),
                running_var=rng.uniform(0.2, 2.0, c), dy=rng.standard_normal((n, c, h, w)))
    return case


def _check_oabn(adapter, case, cmp: Checker) -> None:
    if _oabn_margin(case) <= cmp.profile["oabn_margin"]:
        raise Ambiguous("some |t| lies within the margin of the threshold (the clip's gradient jumps there)")
    kw = dict(threshold=case["threshold"], momentum=case["momentum"], eps=case["eps"], gradient=case["gradient"])
    arrays = [case[k] for k in ("x", "gamma", "beta", "running_mean", "running_var", "dy")]
    out = call(adapter, "oabn_train", *arrays, **kw)
    if not isinstance(out, (tuple, list)) or len(out) != 6:
        raise Mismatch("oabn_train", "must return (y, running_mean, running_var, dx, dgamma, dbeta)")
    out = OABNResult(*out)
    res = ref_oabn.oabn_train(*arrays[:5], threshold=case["threshold"], momentum=case["momentum"], eps=case["eps"])
    dx, dg, db = ref_oabn.oabn_train_backward(case["dy"], case["x"], case["gamma"], threshold=case["threshold"],
                                              eps=case["eps"], gradient=case["gradient"])
    for name, a, e in (("y", out.y, res.y), ("running_mean", out.running_mean, res.running_mean),
                       ("running_var", out.running_var, res.running_var), ("dx", out.dx, dx),
                       ("dgamma", out.dgamma, dg), ("dbeta", out.dbeta, db)):
        cmp.close(name, a, e)


def _oabn_example() -> dict:
    x = np.array([1.0, 3.0, 5.0, 7.0, 0.2, 0.1, -0.1, 0.0]).reshape(2, 2, 1, 2)
    return dict(shape=(2, 2, 1, 2), threshold=1.0, gradient="clip", momentum=0.1, eps=1e-5, seed=0, x=x,
                gamma=np.array([10.0, 0.05]), beta=np.array([0.5, -0.5]), running_mean=np.zeros(2),
                running_var=np.ones(2), dy=np.array([1.0, 0.0, -2.0, 0.5, 0.3, 0.0, 1.0, -1.0]).reshape(2, 2, 1, 2))


_register(Clause(
    id="§4.oabn", section="§4", title="OABN, training mode: forward, running stats, backward",
    checks="t = γ/sqrt(σ²_B + eps), t̃ = clip(t, −s, s), y = t̃·(x − μ_B) + β (biased σ²_B), running stats "
           "as plain BN (unbiased variance, run ← (1−m)·run + m·batch), and dx, dγ, dβ with the 'clip' "
           "(zero through clipped channels) and 'straight_through' gradients, against reference.oabn; "
           "s ∈ {∞, 0.5, 1, 2}, channels with tiny spread (t up to ~60, clipped).",
    tolerance="continuous (rtol 1e-9, atol 1e-11); cases with some |t| within 1e-6·s of s are not compared "
              "(the clip's gradient is discontinuous there, SPEC §6).",
    methods=("oabn_train",), strategy=_oabn_cases, check=_check_oabn, examples=(_oabn_example,),
))


# ============================================================ §5 uniform quantization

_Q_KINDS = ("normal", "heavy", "grid", "zeros")


def _general_array(rng, shape, kind: str, mag: float) -> np.ndarray:
    if kind == "normal":
        a = rng.standard_normal(shape)
    elif kind == "heavy":
        a = rng.standard_t(3, shape)
    elif kind == "grid":
        a = rng.integers(-8, 9, shape) / 2.0
    else:
        a = np.zeros(shape)
    return a * mag


@st.composite
def _weight_cases(draw) -> dict:
    mode = draw(st.sampled_from(["exact", "general"]))
    per_channel = draw(st.booleans())
    layout = draw(st.sampled_from(["2d", "4d"]))
    rows = draw(st.integers(1, 4))
    shape = (rows, draw(st.integers(1, 8))) if layout == "2d" else (rows, draw(st.integers(1, 2)), 3, 3)
    seed = draw(seeds)
    rng = _rng(seed)
    if mode == "exact":  # dyadic: power-of-two scales, exact .5 ties — compared exactly
        bits = draw(st.integers(2, 8))
        qmax = 2 ** (bits - 1) - 1
        codes = rng.integers(-qmax, qmax + 1, shape).astype(np.float64)
        codes += 0.5 * rng.integers(0, 2, shape) * np.where(codes < qmax, 1.0, 0.0)
        codes = np.clip(codes, -qmax, qmax)
        flat = codes.reshape(rows, -1)
        exps = rng.integers(-3, 4, rows) if per_channel else np.full(rows, rng.integers(-3, 4))
        for r in range(rows if per_channel else 1):  # pin max|w| = qmax·2^e so scale = 2^e exactly
            flat[r, rng.integers(flat.shape[1])] = qmax * rng.choice([-1.0, 1.0])
        w = (flat * np.exp2(exps)[:, None]).reshape(shape)
        if per_channel and rows > 1 and rng.random() < 0.3:
            w[rng.integers(rows)] = 0.0  # an all-zero channel: scale 0
    else:
        bits = draw(st.integers(2, 16))
        w = _general_array(rng, shape, draw(st.sampled_from(_Q_KINDS)), 10.0 ** draw(st.integers(-3, 3)))
    return dict(mode=mode, bits=bits, per_channel=per_channel, shape=shape, seed=seed, w=w)


def _ties(r: np.ndarray, eps: float) -> np.ndarray:
    """Elements of ``r`` within ``eps·max(1, |r|)`` of a .5 rounding tie."""
    return np.abs(r - np.floor(r) - 0.5) <= eps * np.maximum(1.0, np.abs(r))


def _check_weight(adapter, case, cmp: Checker) -> None:
    w, bits, pc = case["w"], case["bits"], case["per_channel"]
    out = call(adapter, "fake_quantize_weight", w, bits=bits, per_channel=pc)
    expected = ref_quant.fake_quantize_weight(w, bits, pc)
    amb, alts = None, ()
    if case["mode"] == "general":  # non-dyadic: a value within ε of a .5 tie may round either way
        qmax = ref_quant.weight_qmax(bits)
        scale = np.asarray(ref_quant.weight_qparams(w, bits, pc), dtype=np.float64)
        s = scale if scale.ndim == 0 else scale.reshape((-1,) + (1,) * (w.ndim - 1))
        safe = np.where(s > 0, s, 1.0)
        r = np.where(s > 0, w / safe, 0.0)
        amb = _ties(r, cmp.tie_eps) & (s > 0)
        alts = (np.clip(np.floor(r), -qmax, qmax) * s, np.clip(np.ceil(r), -qmax, qmax) * s)
    cmp.close("w_hat", out, expected, kind="quantized", alternatives=alts, ambiguous=amb)


def _weight_example_ties() -> dict:
    # scale = 3/3 = 1: 0.5 → 0, 1.5 → 2, 2.5 → 2, −0.5 → −0, −1.5 → −2 (half to even)
    w = np.array([[0.5, 1.5, 2.5, -3.0, -0.5, -1.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    return dict(mode="exact", bits=3, per_channel=True, shape=w.shape, seed=0, w=w)


_register(Clause(
    id="§5.uniform-weight", section="§5", title="uniform weight fake quantization (symmetric, narrow range)",
    checks="scale = max|w|/(2^(b−1)−1) per layer or per output channel (axis 0, 2-D and 4-D), "
           "q = clamp(rint(w/scale), ±qmax) with round half to even, ŵ = q·scale, scale 0 → 0, against "
           "reference.quant.fake_quantize_weight; dyadic cases (scale a power of two, exact .5 ties, "
           "all-zero channels) and general ones (normal, heavy-tailed, grid, zeros; magnitudes 1e-3..1e3; "
           "bits 2..16).",
    tolerance="quantized (rtol 1e-12, atol 0): codes exact; in general cases an element within 1e-9 of a .5 tie "
              "may take either neighbouring code (SPEC §6); dyadic ties are exact.",
    methods=("fake_quantize_weight",), strategy=_weight_cases, check=_check_weight,
    examples=(_weight_example_ties,),
))


@st.composite
def _activation_cases(draw, *, with_dy: bool = False) -> dict:
    mode = draw(st.sampled_from(["exact", "general"]))
    bits = draw(st.integers(1, 8))
    qmax = 2**bits - 1
    size = draw(st.integers(1, 24))
    seed = draw(seeds)
    rng = _rng(seed)
    if mode == "exact":  # dyadic: scale 2^e, lo off the grid by f (f = 0.5: a tie on the zero point)
        placement = draw(st.sampled_from(["straddle", "straddle", "positive", "negative"]))
        e = draw(st.integers(-3, 3))
        s = 2.0**e
        if placement == "straddle":
            f = draw(st.sampled_from([0.5, 0.25, 0.75, 0.0, 0.375]))
            zp0 = int(rng.integers(0, qmax)) if qmax > 1 else 0
            if zp0 + f == 0.0:
                f = 0.5
            lo = -(zp0 + f) * s
            hi = lo + qmax * s
            base = -(zp0 + f)
        elif placement == "positive":  # lo > 0: the range is extended down to 0 → zp = 0
            lo, hi, base = float(rng.integers(1, qmax + 1)) * s / 4.0, qmax * s, 0.0
        else:  # hi < 0: extended up to 0 → zp = qmax
            lo, hi, base = -qmax * s, -float(rng.integers(1, qmax + 1)) * s / 4.0, -qmax
        k = rng.integers(int(math.floor(base)) - 3, int(math.ceil(base)) + qmax + 4, size)
        x = (k + rng.choice([0.0, 0.25, 0.5, 0.75], size)) * s
    else:
        kind = draw(st.sampled_from(["straddle", "positive", "negative", "zero"]))
        mag = 10.0 ** draw(st.integers(-3, 3))
        a, b = np.sort(rng.uniform(0.05, 1.0, 2))
        lo, hi = {"straddle": (-a, b), "positive": (a, b), "negative": (-b, -a), "zero": (0.0, 0.0)}[kind]
        lo, hi = lo * mag, hi * mag
        width = max(hi, 0.0) - min(lo, 0.0)
        x = rng.uniform(min(lo, 0.0) - 0.25 * width - mag, max(hi, 0.0) + 0.25 * width + mag, size)
    case = dict(mode=mode, bits=bits, lo=float(lo), hi=float(hi), size=size, seed=seed, x=x)
    if with_dy:
        case["dy"] = rng.standard_normal(size)
    return case


def _activation_ambiguity(case, eps: float):
    """For general cases: (ambiguous zero point?, per-element tie mask, alternatives, scale, zp)."""
    scale, zp = ref_quant.activation_qparams(case["lo"], case["hi"], case["bits"])
    if case["mode"] == "exact" or scale == 0.0:
        return False, None, (), scale, zp
    lo_ext = min(case["lo"], 0.0)
    zp_amb = bool(_ties(np.array(-lo_ext / scale), eps))
    qmax = ref_quant.activation_qmax(case["bits"])
    r = case["x"] / scale
    amb = _ties(r, eps)
    alts = tuple((np.clip(f(r) + zp, 0, qmax) - zp) * scale for f in (np.floor, np.ceil))
    return zp_amb, amb, alts, scale, zp


def _check_activation(adapter, case, cmp: Checker) -> None:
    zp_amb, amb, alts, scale, zp = _activation_ambiguity(case, cmp.tie_eps)
    if zp_amb:
        raise Ambiguous("−lo/scale lies within ε of a .5 tie: the zero point may round either way")
    out = call(adapter, "fake_quantize_activation", case["x"], lo=case["lo"], hi=case["hi"], bits=case["bits"])
    expected = ref_quant.fake_quantize_activation(case["x"], scale, zp, case["bits"])
    cmp.close("x_hat", out, expected, kind="quantized", alternatives=alts, ambiguous=amb)


def _activation_example_zero_point_tie() -> dict:
    # scale 1, lo = −2.5: −lo/scale = 2.5 → zp = 2 (half to even); codes 0..3 → range [−2, 1]
    return dict(mode="exact", bits=2, lo=-2.5, hi=0.5, size=9, seed=0,
                x=np.array([-4.0, -2.75, -2.5, -2.0, -0.5, 0.5, 1.0, 1.25, 3.0]))


_register(Clause(
    id="§5.uniform-activation", section="§5", title="uniform activation fake quantization (asymmetric)",
    checks="from the calibrated [lo, hi]: lo' = min(lo, 0), hi' = max(hi, 0), scale = (hi'−lo')/(2^b−1), "
           "zp = clamp(rint(−lo'/scale), 0, 2^b−1) (rounded!), q = clamp(rint(x/scale) + zp, 0, 2^b−1), "
           "x̂ = (q−zp)·scale, scale 0 → 0, against reference.quant; dyadic cases (exact ties on x/scale and on "
           "the zero point, x beyond both range ends, lo > 0, hi < 0) and general ones; bits 1..8.",
    tolerance="quantized (rtol 1e-12, atol 0); general cases: elements within 1e-9 of a .5 tie may take either "
              "code, and cases whose zero point is within 1e-9 of a tie are not compared (SPEC §6).",
    methods=("fake_quantize_activation",), strategy=_activation_cases, check=_check_activation,
    examples=(_activation_example_zero_point_tie,),
))


def _check_ste(adapter, case, cmp: Checker) -> None:
    zp_amb, _, _, scale, zp = _activation_ambiguity(case, cmp.tie_eps)
    if zp_amb:
        raise Ambiguous("−lo/scale lies within ε of a .5 tie: the zero point may round either way")
    bits, x, dy = case["bits"], case["x"], case["dy"]
    out = call(adapter, "fake_quantize_activation_backward", dy, x, lo=case["lo"], hi=case["hi"], bits=bits)
    lo_r, hi_r = ref_quant.activation_range(scale, zp, bits)
    expected = ref_quant.fake_quantize_backward(dy, x, lo_r, hi_r)
    amb, alts = None, ()
    if case["mode"] == "general":  # within ε of a range end: either side
        tol = cmp.tie_eps * max(scale, abs(lo_r), abs(hi_r), 1e-300)
        amb = (np.abs(x - lo_r) <= tol) | (np.abs(x - hi_r) <= tol)
        alts = (dy, np.zeros_like(dy))
    cmp.close("dx", out, expected, kind="quantized", alternatives=alts, ambiguous=amb)


def _ste_example() -> dict:
    # scale 1, zp 2, representable range [−2, 1]: ends inclusive; 1.25 and −2.25 are outside (torch's
    # code-based mask would pass them: rint(1.25) + 2 = 3 ≤ qmax)
    x = np.array([-2.25, -2.0, 0.0, 1.0, 1.25, 1.5])
    return dict(mode="exact", bits=2, lo=-2.5, hi=0.5, size=6, seed=0, x=x, dy=np.arange(1.0, 7.0))


_register(Clause(
    id="§5.ste", section="§5", title="straight-through estimator of the activation quantizer",
    checks="∂L/∂x = dy·[lo_repr ≤ x ≤ hi_repr] with the representable range ((0−zp)·scale, (qmax−zp)·scale), "
           "ends inclusive, masked on the INPUT value (not on the rounded code as torch's fake_quantize does: "
           "inputs up to half a step outside get 0), against reference.quant.fake_quantize_backward.",
    tolerance="quantized (rtol 1e-12, atol 0): every element is dy or 0; in general cases an input within "
              "1e-9·scale of a range end may go either way (SPEC §6).",
    methods=("fake_quantize_activation_backward",), strategy=lambda: _activation_cases(with_dy=True),
    check=_check_ste, examples=(_ste_example,),
))


def _lossy_max(m: float, qmax: int) -> float:
    """The first float ≥ m whose range round trip is lossy: fl(fl(m/qmax)·qmax) < m (none for qmax = 1)."""
    if qmax == 1:
        return m
    for j in range(2048):  # lossy values cluster in parts of the binade: search coarsely
        c = m * (1.0 + j / 1024.0)
        if (c / qmax) * qmax < c:
            return c
    return m


@st.composite
def _weight_ste_cases(draw) -> dict:
    bits = draw(st.sampled_from([3, 2, 4, 8, 16]))
    per_channel = draw(st.booleans())
    lossy = draw(st.booleans())
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 8)))
    seed = draw(seeds)
    rng = _rng(seed)
    w = _general_array(rng, shape, draw(st.sampled_from(("normal", "heavy", "grid"))), 10.0 ** draw(st.integers(-3, 3)))
    if lossy:  # pin the largest |w| of each row (or of the tensor) to a value whose range round trip is lossy
        qmax = 2 ** (bits - 1) - 1
        for r in range(shape[0] if per_channel else 1):
            rows = w[r] if per_channel else w.reshape(-1)
            j = int(np.argmax(np.abs(rows)))
            if rows[j] != 0:
                rows[j] = np.sign(rows[j]) * _lossy_max(float(abs(rows[j])), qmax)
    return dict(bits=bits, per_channel=per_channel, lossy=lossy, shape=shape, seed=seed, w=w,
                dy=rng.standard_normal(shape))


def _check_weight_ste(adapter, case, cmp: Checker) -> None:
    out = call(adapter, "fake_quantize_weight_backward", case["dy"], case["w"], bits=case["bits"],
               per_channel=case["per_channel"])
    cmp.close("dw", out, case["dy"], kind="quantized")


def _weight_ste_example() -> dict:
    # max|w| = 0.9, qmax = 3: fl(fl(0.9/3)·3) = 0.8999999999999999 < 0.9, so a floating-point test
    # |w| ≤ qmax·scale drops the gradient of the largest weight; the spec passes every one
    w = np.array([[0.9, -0.2, 0.1], [0.3, 0.05, -0.9]])
    return dict(bits=3, per_channel=False, lossy=True, shape=w.shape, seed=0, w=w, dy=np.ones_like(w))


_register(Clause(
    id="§5.ste-weight", section="§5", title="straight-through estimator of the weight quantizer",
    checks="with scale = max|w|/qmax taken from w itself every weight is inside the representable range, so "
           "∂L/∂w = dy everywhere (reference.qat.UniformWeightQuantizer.backward). A port that re-tests "
           "|w| ≤ qmax·scale in floating point drops the gradient of the largest weight whenever "
           "fl(fl(max|w|/qmax)·qmax) < max|w|.",
    tolerance="quantized (rtol 1e-12, atol 0): dy must come back unchanged.",
    methods=("fake_quantize_weight_backward",), strategy=_weight_ste_cases, check=_check_weight_ste,
    examples=(_weight_ste_example,),
))


# ============================================================ §5 k-means


@st.composite
def _kmeans_tie_cases(draw) -> dict:
    k = draw(st.sampled_from([2, 4, 8]))
    layout = draw(st.sampled_from(["1d", "2d"]))
    seed = draw(seeds)
    rng = _rng(seed)
    c = np.sort(rng.integers(-16, 17, k) / 4.0)  # dyadic: midpoints exact, duplicates possible
    mids = 0.5 * c[:-1] + 0.5 * c[1:]
    extra = rng.integers(-80, 81, 6) / 8.0
    w = rng.permutation(np.concatenate([mids, c, extra, [c[0] - 1.0, c[-1] + 1.0]]))
    if layout == "2d" and w.size % 2 == 0:
        w = w.reshape(2, -1)
    return dict(k=k, seed=seed, centroids=c, w=w)


def _check_kmeans_ties(adapter, case, cmp: Checker) -> None:
    out = call(adapter, "kmeans_fake_quantize", case["w"], case["centroids"])
    cmp.close("w_hat", out, ref_kmeans.kmeans_fake_quantize(case["w"], case["centroids"]), kind="quantized")


def _kmeans_tie_example() -> dict:
    c = np.array([-1.0, 0.0, 1.0, 3.0])
    return dict(k=4, seed=0, centroids=c, w=np.array([-0.5, 0.5, 2.0, 2.0000000000000004, -2.0, 5.0]))


_register(Clause(
    id="§5.kmeans-ties", section="§5", title="k-means assignment: midpoint ties go to the lower centroid",
    checks="ŵ = c[label(w)] with sorted centroids, boundaries m_j = 0.5·c_j + 0.5·c_{j+1} and "
           "label(w) = #{j : m_j < w}: a value exactly on a midpoint takes the LOWER centroid, duplicate "
           "centroids the lowest index; against reference.kmeans.kmeans_fake_quantize on dyadic centroids "
           "(exact midpoints), values on every midpoint, on the centroids and beyond both ends.",
    tolerance="quantized (rtol 1e-12, atol 0): dyadic data, every correct float64 port is exact here.",
    methods=("kmeans_fake_quantize",), strategy=_kmeans_tie_cases, check=_check_kmeans_ties,
    examples=(_kmeans_tie_example,),
))


@st.composite
def _kmeans_cases(draw) -> dict:
    init = draw(st.sampled_from(["optimal", "linear", "quantile", "warm"]))
    k = draw(st.sampled_from([2, 1, 4, 8]))
    n = draw(st.integers(1, 40))
    max_iter = draw(st.sampled_from([300, 0, 1, 3]))
    layout = draw(st.sampled_from(["1d", "2d"]))
    decimals = None if init == "optimal" else draw(st.sampled_from([None, 1, 0, 2]))
    seed = draw(seeds)
    rng = _rng(seed)
    v = rng.standard_t(3, n) * 10.0 ** rng.integers(-2, 3)
    if decimals is not None:  # repeated values
        v = np.round(v, decimals)
    if layout == "2d" and n % 2 == 0:
        v = v.reshape(2, -1)
    warm = np.sort(rng.choice(v.ravel(), k) + rng.normal(0, 0.1, k)) if init == "warm" else None
    return dict(init=init, k=k, n=n, max_iter=max_iter, decimals=decimals, seed=seed, values=v, init_centroids=warm)


def _lloyd_margin(case) -> float:
    """Smallest distance (relative to max|v|) of any value to any midpoint over the reference's Lloyd run."""
    v = case["values"].ravel()
    k = case["k"]
    if k >= np.unique(v).size:
        return INF
    c = np.sort(case["init_centroids"]) if case["init"] == "warm" else \
        ref_kmeans.initial_centroids(v, k, case["init"])
    scale = max(float(np.max(np.abs(v))), 1e-300)

    def margin(c):
        m = 0.5 * c[:-1] + 0.5 * c[1:]
        return float(np.min(np.abs(v[:, None] - m[None, :]))) / scale if m.size else INF

    worst = margin(c)
    labels = ref_kmeans.assign(v, c)
    for _ in range(case["max_iter"]):
        c, _ = ref_kmeans.lloyd_step(v, c)
        new = ref_kmeans.assign(v, c)
        worst = min(worst, margin(c))
        if np.array_equal(new, labels):
            break
        labels = new
    return worst


def _check_kmeans(adapter, case, cmp: Checker) -> None:
    kw = dict(init=case["init"], max_iter=case["max_iter"], init_centroids=case["init_centroids"])
    out = call(adapter, "kmeans_1d", case["values"], case["k"], **kw)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("kmeans_1d", "must return (centroids, labels)")
    ref = ref_kmeans.kmeans_1d(case["values"], case["k"], **kw)
    try:
        cmp.close("centroids", out[0], ref.centroids)
        labels = np.asarray(out[1])
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.rint(labels)):
            labels = labels.astype(np.int64)
        cmp.equal("labels", labels, ref.labels)
    except Mismatch:
        if _lloyd_margin(case) <= cmp.tie_eps:
            raise Ambiguous("a value lies within ε of a midpoint during the reference's Lloyd run") from None
        raise


def _kmeans_example() -> dict:
    v = np.array([0.0, 0.1, 0.2, 5.0, 5.2, 9.0, 9.0, 9.0])
    return dict(init="linear", k=2, n=8, max_iter=300, decimals=1, seed=0, values=v, init_centroids=None)


def _kmeans_example_few_distinct() -> dict:
    v = np.array([0.1, 0.1, 0.1, 0.7])
    return dict(init="optimal", k=4, n=4, max_iter=300, decimals=1, seed=0, values=v, init_centroids=None)


_register(Clause(
    id="§5.kmeans", section="§5", title="1-D k-means (Lloyd with named inits, exact DP optimum)",
    checks="centroids (ascending) and labels of reference.kmeans.kmeans_1d: inits 'optimal' (exact DP), "
           "'linear' (linspace over [min, max]), 'quantile' (mid-quantiles, linear interpolation), 'warm' "
           "(given centroids, sorted on entry); assignment with the midpoint rule; update = mean of members, an "
           "empty cluster keeps its centroid; stop on unchanged labels or max_iter ∈ {0, 1, 3, 300}; "
           "k ≥ #distinct → the distinct values then copies of the largest; k ∈ {1, 2, 4, 8}, repeated values, "
           "1-D and 2-D inputs (labels keep the shape). kmeans++ is seed/RNG-specific and not checked.",
    tolerance="centroids continuous (rtol 1e-9, atol 1e-11), labels exact; a case where the adapter differs and "
              "some value came within 1e-9 (relative to max|v|) of a midpoint during the reference's run is not "
              "compared (SPEC §6) — exact ties are §5.kmeans-ties' job.",
    methods=("kmeans_1d",), strategy=_kmeans_cases, check=_check_kmeans,
    examples=(_kmeans_example, _kmeans_example_few_distinct),
))


# ============================================================ §1 one training iteration

_TRAIN_KINDS = ("repvgg", "qarepvgg", "csla", "repopt_target", "repvgg_oabn")


def _randomize_state(rng, net, params, buffers, specs) -> None:
    """BN γ/β and running stats away from their init, CSLA scales random (in place)."""
    for k in list(params):
        if k.endswith(("bn.weight", "rbr_identity.weight")):
            params[k] = _signed(rng, params[k].shape, 0.3, 2.0)
        elif k.endswith(("bn.bias", "rbr_identity.bias")):
            params[k] = rng.normal(0.0, 0.5, params[k].shape)
        elif k.endswith(("scale_conv.weight", "scale_1x1.weight")):
            params[k] = _signed(rng, params[k].shape, 0.3, 1.5)
        elif k.endswith("scale_identity.weight"):
            params[k] = rng.uniform(0.5, 1.5, params[k].shape)
    for k in buffers:
        buffers[k] = rng.normal(0.0, 0.5, buffers[k].shape) if k.endswith("running_mean") \
            else rng.uniform(0.5, 2.0, buffers[k].shape)


@st.composite
def _train_cases(draw) -> dict:
    n_blocks = draw(st.integers(1, 3))
    cin = cin0 = draw(st.integers(1, 3))
    specs = []
    for j in range(n_blocks):
        kind = draw(st.sampled_from(_TRAIN_KINDS))
        cout = cin if draw(st.booleans()) else draw(st.integers(1, 4))
        stride = draw(st.sampled_from([1, 2]))
        groups = 1
        if kind in ("repvgg", "repvgg_oabn", "qarepvgg") and cin % 2 == 0 and cout % 2 == 0 and draw(st.booleans()):
            groups = 2
        extra = dict(bn_momentum=draw(st.sampled_from([0.1, 0.5])), bn_eps=draw(st.sampled_from([1e-5, 1e-3])))
        if kind == "repvgg_oabn":
            kind = "repvgg"
            extra.update(oabn_threshold=draw(st.sampled_from([1.0, 0.5, 2.0])),
                         oabn_gradient=draw(st.sampled_from(OABN_GRADIENTS)))
        if kind == "csla":
            can = cin == cout and stride == 1
            extra["identity"] = draw(st.sampled_from(IDENTITY_MODES)) if can else "none"
        prefix = "stage0" if j == 0 else f"stage1.{j - 1}"
        specs.append(BlockSpec(kind, prefix, cin, cout, stride, groups, **extra))
        cin = cout
    num_classes = draw(st.integers(2, 3))
    hw, batch = draw(st.integers(3, 6)), draw(st.integers(2, 4))
    hp = draw(_sgd_hparams())
    decay_kind = draw(st.sampled_from(["scalar", "official"]))
    use_masks = draw(st.booleans())
    later_step = draw(st.booleans()) and hp["momentum"] > 0
    seed = draw(seeds)
    return _build_train_case(tuple(specs), num_classes, cin0, hw, batch, hp, decay_kind, use_masks, later_step, seed)


def _build_train_case(specs, num_classes, cin0, hw, batch, hp, decay_kind, use_masks, later_step, seed) -> dict:
    hp = dict(hp)
    rng = _rng(seed)
    spec = NetworkSpec(tuple(specs), num_classes)
    net = spec.reference_network({f"{b.prefix}.scale_{n}.weight": np.ones(b.out_channels) for b in specs
                                  for n in ("conv", "1x1", "identity")})
    params, buffers = net.init(rng)
    _randomize_state(rng, net, params, buffers, specs)
    names = spec.trainable_names(params)
    wd = hp.pop("weight_decay")
    weight_decay = ref_optim.official_weight_decay({k: params[k] for k in names}, wd) if decay_kind == "official" \
        else wd
    masks = None
    if use_masks:
        masks = {}
        for b in specs:
            if b.kind == "repopt_target":
                ident = "trainable" if b.has_identity else "none"
                masks[f"{b.prefix}.conv.weight"] = ref_repopt.grad_mult_mask(
                    rng.uniform(0.3, 1.5, b.out_channels), rng.uniform(0.3, 1.5, b.out_channels), b.in_channels,
                    identity=ident)
        masks = masks or None
    opt_state = {k: ({"momentum_buffer": rng.standard_normal(params[k].shape)} if later_step else {}) for k in names}
    x = rng.standard_normal((batch, cin0, hw, hw))
    labels = rng.integers(0, num_classes, batch)
    return dict(network=spec, optimizer=SGDSpec(weight_decay=weight_decay, grad_mult_masks=masks, **hp),
                seed=seed, params=params, buffers=buffers, opt_state=opt_state, x=x, labels=labels)


def _train_oabn_margin(case) -> float:
    spec: NetworkSpec = case["network"]
    net = spec.reference_network(case["params"])
    h = case["x"]
    margin = INF
    for (prefix, block), b in zip(net.blocks, spec.blocks):
        p = {k[len(prefix) + 1:]: v for k, v in case["params"].items() if k.startswith(prefix + ".")}
        bu = {k[len(prefix) + 1:]: v for k, v in case["buffers"].items() if k.startswith(prefix + ".")}
        if b.kind == "repvgg" and b.has_identity and math.isfinite(b.oabn_threshold):
            t0 = p["rbr_identity.weight"] / np.sqrt(h.var(axis=(0, 2, 3)) + b.bn_eps)
            margin = min(margin, float(np.min(np.abs(np.abs(t0) - b.oabn_threshold))) / b.oabn_threshold)
        h, _, _ = block.forward(p, bu, h, training=True)
    return margin


def _check_train(adapter, case, cmp: Checker) -> None:
    if _train_oabn_margin(case) <= cmp.profile["oabn_margin"]:
        raise Ambiguous("an OABN identity factor |t0| lies within the margin of its threshold")
    spec, opt = case["network"], case["optimizer"]
    out = call(adapter, "train_iteration", spec, case["params"], with_num_batches_tracked(case["buffers"]), case["x"],
               case["labels"], optimizer=opt, opt_state=case["opt_state"])
    if not isinstance(out, (tuple, list)) or len(out) != 6:
        raise Mismatch("train_iteration", "must return (loss, logits, grads, params, buffers, opt_state)")
    out = TrainIterationResult(*out)
    net = spec.reference_network(case["params"])
    wd = opt.weight_decay
    sgd = ref_optim.SGD(lr=opt.lr, momentum=opt.momentum, dampening=opt.dampening, nesterov=opt.nesterov,
                        weight_decay=dict(wd) if isinstance(wd, Mapping) else wd, grad_mult_masks=opt.grad_mult_masks)
    loss, logits, grads, params, buffers, state = train_step(net, case["params"], case["buffers"], sgd,
                                                             {k: dict(v) for k, v in case["opt_state"].items()},
                                                             case["x"], case["labels"])
    cmp.close("loss", out.loss, loss)
    cmp.close("logits", out.logits, logits)
    if out.grads is not None:
        try:
            cmp.close_tree("grads", out.grads, grads)
        except Mismatch as exc:
            raise _explain_grads_after_step(exc, out.grads, grads, case, cmp) from None
    cmp.close_tree("params", out.params, params)
    cmp.close_tree("buffers", _without_num_batches_tracked(out.buffers), buffers)
    cmp.same_keys("opt_state", out.opt_state, state)
    for k in state:
        got = out.opt_state[k]
        if not isinstance(got, Mapping):
            raise Mismatch(f"opt_state[{k!r}]", f"must be a mapping, got {type(got).__name__}")
        cmp.same_keys(f"opt_state[{k!r}]", got, state[k])
        for key in state[k]:
            cmp.close(f"opt_state[{k!r}][{key!r}]", got[key], state[k][key])


def _explain_grads_after_step(exc: Mismatch, got, grads, case, cmp: Checker) -> Mismatch:
    """Name the cause when a returned gradient equals ``∂L/∂θ + λ·θ`` for an unmasked, decayed ``θ``.

    The original RepOptimizer's step adds the weight decay into ``p.grad`` in place
    (``d_p = p.grad.data; d_p.add_(p.data, alpha=λ)``) for parameters without a mask, so an adapter
    that reads ``p.grad`` after ``optimizer.step()`` returns exactly that. Other mismatches are
    returned unchanged."""
    opt: SGDSpec = case["optimizer"]
    masks = opt.grad_mult_masks or {}
    hits = []
    for k, g in grads.items():
        lam = opt.decay_for(k)
        if lam == 0.0 or k in masks or not isinstance(got, Mapping) or k not in got:
            continue
        try:
            Checker(cmp.profile, ErrorStats()).close(k, got[k], g + lam * case["params"][k])
        except Mismatch:
            continue
        try:
            Checker(cmp.profile, ErrorStats()).close(k, got[k], g)
        except Mismatch:
            hits.append(k)
    if not hits:
        return exc
    return Mismatch(exc.quantity, f"{exc.detail}. The returned gradient of {', '.join(hits)} equals ∂L/∂θ + λ·θ: "
                                  f"the adapter read p.grad AFTER optimizer.step(), and the optimizer added the "
                                  f"weight decay into p.grad in place (the original RepOptimizer code does, for "
                                  f"unmasked decayed parameters). Copy the gradients before step() "
                                  f"(docs/porting.md, 'Protocol pitfalls').",
                    max_abs=exc.max_abs, max_rel=exc.max_rel, tol=exc.tol)


def _plain_sgd(lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=5e-2) -> dict:
    return dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)


@special("RepVGG identity and stride-2 blocks, later momentum step, per-name weight decay")
def _train_example_repvgg() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1), BlockSpec("repvgg", "stage1.0", 2, 3, 2))
    return _build_train_case(specs, 3, 2, 5, 3, _plain_sgd(), "official", False, True, 0)


@special("RepVGG identity, first step, scalar weight decay on every parameter")
def _train_example_repvgg_first() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1, bn_momentum=0.5, bn_eps=1e-3),)
    return _build_train_case(specs, 2, 2, 4, 2, _plain_sgd(momentum=0.5, dampening=0.1, weight_decay=1e-4),
                             "scalar", False, False, 1)


@special("CSLA blocks with trainable and constant identity", needs="CSLA")
def _train_example_csla() -> dict:
    specs = (BlockSpec("csla", "stage0", 2, 2, 1, identity="trainable"),
             BlockSpec("csla", "stage1.0", 2, 2, 1, identity="constant"))
    return _build_train_case(specs, 2, 2, 4, 3, _plain_sgd(nesterov=True), "official", False, True, 2)


@special("RepOpt target blocks with Grad Mult masks and weight decay", needs="Grad Mult masks")
def _train_example_masked() -> dict:
    specs = (BlockSpec("repopt_target", "stage0", 2, 2, 1), BlockSpec("repopt_target", "stage1.0", 2, 3, 2))
    return _build_train_case(specs, 2, 2, 4, 3, _plain_sgd(), "scalar", True, True, 3)


@special("OABN identity with a clipped channel (clip and straight-through gradients)", needs="OABN")
def _train_example_oabn() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1, oabn_threshold=0.5, oabn_gradient="clip"),
             BlockSpec("repvgg", "stage1.0", 2, 2, 1, oabn_threshold=0.5, oabn_gradient="straight_through"))
    return _build_train_case(specs, 2, 2, 4, 3, _plain_sgd(), "official", False, False, 4)


@special("QARepVGG block", needs="QARepVGG")
def _train_example_qarepvgg() -> dict:
    specs = (BlockSpec("qarepvgg", "stage0", 2, 2, 1), BlockSpec("qarepvgg", "stage1.0", 2, 2, 2))
    return _build_train_case(specs, 2, 2, 4, 2, _plain_sgd(momentum=0.0), "scalar", False, False, 5)


_register(Clause(
    id="§1.train-iteration", section="§1", title="one training iteration of a small network",
    checks="train-mode forward (BN batch statistics, running-stat update), mean softmax cross-entropy, "
           "backward, one SGD/RepOpt-SGD step — loss, logits, gradients (if returned), every parameter, BN "
           "buffers and momentum buffers against reference.network.train_step; 1–3 chained blocks of any kind "
           "(RepVGG with and without OABN identity and groups, QARepVGG, CSLA with trainable/constant/no "
           "identity, RepOpt target with Grad Mult masks), strides 1/2, first and later steps, scalar and "
           "official per-name weight decay; hand-written cases for every block feature (plain RepVGG ones every "
           "port must run). The adapter gets PyTorch-style buffers (num_batches_tracked included; returned ones "
           "are not compared); returned gradients must be read before the optimizer step.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): SPEC §6's float64 contract; cases where an OABN |t0| is within "
              "1e-6·s of s are not compared.",
    methods=("train_iteration",), strategy=_train_cases, check=_check_train, budget=0.5,
    examples=(_train_example_repvgg, _train_example_repvgg_first, _train_example_csla, _train_example_masked,
              _train_example_oabn, _train_example_qarepvgg),
))

#: ordered as the SPEC
_ORDER = ("§1.train-iteration", "§2.fusion", "§2.qarepvgg-fusion", "§3.grad-mult", "§3.repopt-sgd-step",
          "§3.theorem", "§4.oabn", "§5.uniform-weight", "§5.uniform-activation", "§5.ste", "§5.ste-weight",
          "§5.kmeans-ties", "§5.kmeans")
CLAUSES = {k: CLAUSES[k] for k in _ORDER}
