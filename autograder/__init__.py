"""The course's autograder.

* :mod:`autograder.notebook` reads nbgrader notebooks and rebuilds the program
  to grade from the instructor's source plus the student's answer cells.
* :mod:`autograder.api` is what hidden tests use: the ``Submission`` interface,
  ``Ref`` handles and strict tensor comparisons.
* :mod:`autograder.inprocess` runs a rebuilt program in the grading process
  (for development; it offers no isolation).
* :mod:`autograder.grading` runs an assignment's hidden tests against a
  submission and turns their outcomes into points per ``grade_id``.

Hidden test suites live in ``autograder/tests/test_<assignment>.py``.
"""
