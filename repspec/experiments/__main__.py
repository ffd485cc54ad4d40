"""``python -m repspec.experiments``: re-render a demo run's Markdown, or compare two runs' verdicts.

- ``render RESULTS [--out DIR]``: table.md, claims.md and readme_section.md from a ``results.json``
  (:func:`repspec.experiments.demo.render_results`; the same as ``repspec demo --render``);
- ``compare A B``: the claim verdicts that differ between two ``results.json``
  (:func:`repspec.experiments.demo.compare_verdicts`); exit status 1 when any differs.
"""

from __future__ import annotations

import argparse
import sys

from repspec.experiments.demo import compare_verdicts, load_results, render_results


def main(argv: list[str] | None = None) -> int:
    """``python -m repspec.experiments render RESULTS [--out DIR]`` or ``compare A B`` (verdicts that differ)."""
    p = argparse.ArgumentParser(prog="python -m repspec.experiments")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="re-render table.md/claims.md/readme_section.md from results.json")
    r.add_argument("results")
    r.add_argument("--out", default=None)
    c = sub.add_parser("compare", help="list the verdicts that differ between two results.json")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args(argv)
    if args.cmd == "render":
        print(f"rendered into {render_results(args.results, args.out)}")
        return 0
    diffs = compare_verdicts(load_results(args.a), load_results(args.b))
    print("\n".join(diffs) if diffs else "every verdict agrees")
    return 1 if diffs else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
