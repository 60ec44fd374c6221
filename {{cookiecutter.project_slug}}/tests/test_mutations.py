"""lab/mutations.py, the mutation check of the proof, checked on a few of its mutations (the whole list takes long:
run it as `python -m lab.mutations`).

Each mutation named here runs in a copy of the project against the one test that should catch it; a mutation listed
as changing no number must survive that test, or the harness would call anything caught.
"""

from pathlib import Path

import pytest

from conftest import ROOT
from lab.mutations import MUTATIONS, PACKAGE, check, copy_project, uncovered

VARIATION = "tests/test_equivalence.py::test_variations_stay_identical[{}]"
# A mutation, the test that runs against it, whether that test must catch it.
CHECKS = {
    "val_loss weight=1": (VARIATION.format("validation in several batches"), True),
    "fabric: the partial window not stepped": (VARIATION.format("accumulating 4, clipping at 0.05"), True),
    "validation with grad": (VARIATION.format("validation in several batches"), False),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("mutations"))


@pytest.mark.parametrize("name", CHECKS)
def test_a_mutation_is_caught_unless_listed_as_changing_no_number(name, project):
    test, caught = CHECKS[name]
    mutation = MUTATIONS[name]
    assert bool(mutation.equivalent) is not caught  # the list says the same
    assert check(mutation, project, (test,))[0] is caught
    path = PACKAGE.relative_to(ROOT) / mutation.file
    assert (project / path).read_text() == (ROOT / path).read_text()  # put back for the next


@pytest.mark.parametrize("file", ["loop.py", "loop_fabric.py"])
def test_every_statement_of_each_fit_has_a_mutation_that_applies(file):
    """A statement added to a loop needs its mutation; a mutation whose code is gone fails here, naming it."""
    source = (PACKAGE / file).read_text()
    for mutation in MUTATIONS.values():
        if mutation.file == file:
            mutation.apply(source)  # LookupError: the code it changes is not in fit() once
    assert uncovered(file) == []
