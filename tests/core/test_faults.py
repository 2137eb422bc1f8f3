"""Fault points: inert unless FEDCARE_FAULT names them; then kill or fail at the Nth hit."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from fedcare.core import faults

POINT = faults.declare("test.point", "a point only these tests reach")


def test_a_point_does_nothing_unless_named():
    faults.reset_for_tests("test.other")
    for _ in range(3):
        faults.reach(POINT)
    faults.reset_for_tests(None)


def test_enospc_is_raised_at_the_named_hit_only():
    faults.reset_for_tests(f"{POINT}@2:enospc")
    faults.reach(POINT)
    with pytest.raises(OSError) as raised:
        faults.reach(POINT)
    assert raised.value.errno == errno.ENOSPC and POINT in str(raised.value)
    faults.reach(POINT)  # only the 2nd hit fails
    faults.reset_for_tests(None)


def test_kill_ends_the_process_at_once_without_cleanup():
    code = (
        "from fedcare.core import faults\n"
        f"faults.declare('{POINT}', 'x')\n"
        "try:\n"
        f"    faults.reach('{POINT}')\n"
        "finally:\n"
        "    print('cleanup ran')\n"
    )
    env = {"FEDCARE_FAULT": POINT, "PATH": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == faults.KILLED_EXIT and "cleanup ran" not in done.stdout


@pytest.mark.parametrize("bad", ["x@0", "x@two", "x:explode"])
def test_a_malformed_plan_is_refused(bad):
    with pytest.raises(ValueError, match="FEDCARE_FAULT"):
        faults.FaultPlan.parse(bad)


def test_points_are_listed_by_role():
    assert POINT in faults.points_of("test")
    with pytest.raises(ValueError, match="declared twice"):
        faults.declare(POINT, "another meaning")
