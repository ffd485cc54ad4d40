"""The conformance clauses as pytest tests, for ports that run the suite without this repository's tests.

    pytest -p repspec.conformance.pytest_plugin --pyargs repspec.conformance.suite \
        --repspec-impl mypkg.adapter:MyAdapter

One test per clause (``test_clause[§2.fusion]`` …); see :mod:`repspec.conformance.pytest_plugin`.
"""

from repspec.conformance.pytest_plugin import check_clause, selected_impl, selected_max_examples, selected_seed


def test_clause(repspec_clause, repspec_adapter, request):
    check_clause(repspec_adapter, repspec_clause, max_examples=selected_max_examples(request.config),
                 seed=selected_seed(request.config), impl=selected_impl(request.config))
