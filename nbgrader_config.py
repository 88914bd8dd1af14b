"""nbgrader configuration of the course.

``solutions/`` is the single source of every assignment (nbgrader's source
directory); ``assignments/`` is the generated student release, committed.
"""

import os

c = get_config()  # noqa: F821 - provided by nbgrader

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "seqmodels"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(c.CourseDirectory.root, "gradebook.db")

# Generated notebooks carry no outputs, and generation never runs them here.
c.ClearOutput.enabled = True
c.GenerateAssignment.create_assignment = True
# The stub students see in an answer cell.
c.ClearSolutions.code_stub = {
    "python": "# YOUR CODE HERE\nraise NotImplementedError()",
}
