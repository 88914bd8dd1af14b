"""The course's autograder.

Harness side (never runs student code):

* :mod:`.course`    where everything of a course lives;
* :mod:`.notebook`  reading nbgrader notebooks, the cell kinds, rebuilding the program;
* :mod:`.grading`   the pytest plugin, scoring, and the one ``grade`` pipeline;
* :mod:`.api`       what hidden tests use: the ``Submission`` interface and strict checks;
* :mod:`.gradebook` nbgrader's gradebook and the autograded notebook;
* :mod:`.engine`    config, sandboxes, the remote session, the results store, the batch scheduler;
* :mod:`.workflow`, :mod:`.cli`, :mod:`.devices`.

Beside student code: :mod:`.sandbox`, copied whole into each runner's boot
directory, importing nothing from the rest of this package.

Hidden test suites live in ``autograder/tests/test_<assignment>.py``.
"""
