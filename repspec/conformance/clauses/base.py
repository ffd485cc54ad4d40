"""The harness of the clause registry: one entry per checkable SPEC clause.

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
  from the number of steps and the conditioning of the sum (``theorem_bound``), ~1e-14 relative;
- ``quantized`` rtol 1e-12, atol 0: a fake-quantized value is ``code·scale``; the code must be
  the reference's exactly (one code off is a relative error ≥ 2^-16), the scale may differ
  by an ulp or two;
- ``selection`` rtol 0, atol 0: an element of the input picked out (a maximum ``max|w|``) is the input
  value itself, exactly (float32 profile: the input rounded once, half an ulp);
- ``tie_eps`` 1e-9: a value whose ``x/scale`` lies within ``tie_eps·max(1, |x/scale|)`` of a
  rounding tie (or of a k-means midpoint / STE range end) in a case built from *non-dyadic*
  numbers may go either way (SPEC §6). Cases built from dyadic numbers (power-of-two scales)
  are exact in any correct float64 port, so there ties are compared exactly — that is where
  "round half to even" and "a midpoint goes to the lower centroid" are checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from hypothesis import strategies as st

from ..adapter import NotProvided

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
    "expect_value_error",
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
        "selection": Tol(0.0, 0.0, "an element of the input selected (a maximum): exact"),
    },
    # advisory: a float32 port (inputs are rounded to float32 by the port itself)
    "float32": {
        "continuous": Tol(1e-4, 1e-5, "float32 unit roundoff 6e-8, amplified by BN 1/sigma"),
        "quantized": Tol(1e-6, 1e-7, "float32 rounding of code·scale"),
        "tie_eps": 1e-5,
        "oabn_margin": 1e-3,
        "unit_roundoff": 2.0**-24,
        "selection": Tol(2.0**-24, 0.0, "an input element rounded once to float32: half an ulp"),
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
    if isinstance(b, (list, tuple)) and b and isinstance(b[0], np.ndarray):  # a list of batches
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b))
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


def expect_value_error(adapter, method: str, *args, why: str, **kwargs) -> None:
    """Call ``adapter.method`` on an input the SPEC refuses: it must raise ``ValueError`` (SPEC §0.inputs).

    A returned value or another exception is a :class:`Mismatch` naming ``why``; ``NotProvided``
    declines the case, as everywhere.
    """
    try:
        out = call(adapter, method, *args, **kwargs)
    except AdapterRaised as exc:
        if isinstance(exc.exc, ValueError):
            return
        raise Mismatch(method, f"must raise ValueError ({why}); raised {type(exc.exc).__name__}: {exc.exc}") from None
    raise Mismatch(method, f"must raise ValueError ({why}); returned a {type(out).__name__} instead")


def as_f64(name: str, value) -> np.ndarray:
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
            # values with few significant bits (0, small integers, halves …) are float32 numbers in any
            # precision: the hint needs one that float16 cannot hold (more than 11 significant bits)
            as16 = actual.astype(np.float16).astype(np.float64)
        if np.array_equal(as32, actual) and not np.array_equal(exp32, expected) and not np.array_equal(as16, actual):
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
        act = as_f64(name, actual)
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
        act = as_f64(name, actual)
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
    # (what, case -> label or labels): the report counts the checked cases per label, e.g. ("method", …)
    # shows how often each of the five calibrators of §5.calibrators was checked
    case_label: tuple[str, Callable[[dict], Any]] | None = None


CLAUSES: dict[str, Clause] = {}


def register(clause: Clause) -> Clause:
    """Add ``clause`` to :data:`CLAUSES`, which stays in SPEC order: by section, then as registered."""
    CLAUSES[clause.id] = clause
    ordered = sorted(CLAUSES.values(), key=lambda c: int(c.section.lstrip("§")))
    CLAUSES.clear()
    CLAUSES.update((c.id, c) for c in ordered)
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


def without_num_batches_tracked(buffers):
    if not isinstance(buffers, Mapping):
        return buffers
    return {k: v for k, v in buffers.items() if not str(k).endswith("num_batches_tracked")}


# ---------------------------------------------------------------- shared strategies

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def case_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def signed_uniform(rng, size, lo: float, hi: float) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size) * rng.uniform(lo, hi, size)


def bn_params(rng, shapes: Mapping[str, tuple], big_gamma: bool = False) -> dict:
    """Random branch parameters: conv kernels N(0, 1); BN γ with random sign, |γ| ∈ [0.2, 3]; β ~ N(0, 0.5)."""
    out = {}
    for k, shape in shapes.items():
        if len(shape) == 4:
            out[k] = rng.standard_normal(shape)
        elif k.endswith("weight"):
            out[k] = signed_uniform(rng, shape, 0.2, 6.0 if big_gamma else 3.0)
        else:
            out[k] = rng.normal(0.0, 0.5, shape)
    return out


def bn_buffers(rng, shapes: Mapping[str, tuple]) -> dict:
    return {k: rng.normal(0.0, 0.5, s) if k.endswith("running_mean") else rng.uniform(0.05, 3.0, s)
            for k, s in shapes.items()}


@st.composite
def sgd_hparams(draw, *, allow_decay: bool = True) -> dict:
    """lr, momentum, dampening, nesterov, weight_decay in torch.optim.SGD's domain (nesterov 1 in 4)."""
    momentum = draw(st.sampled_from([0.0, 0.9, 0.5]))
    nesterov = draw(st.sampled_from([False, False, False, True])) if momentum > 0 else False
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.5, 0.1]))
    wd = draw(st.sampled_from([0.0, 5e-2, 1e-4])) if allow_decay else 0.0
    return dict(lr=draw(st.sampled_from([0.1, 0.01, 0.5])), momentum=momentum, dampening=dampening,
                nesterov=nesterov, weight_decay=wd)
