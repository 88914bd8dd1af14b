"""The code that runs next to student code.

The engine copies this package whole into a fresh boot directory outside the
course, and the runner imports it from there; so it imports nothing from the
rest of ``autograder``. ``protocol`` is what both sides agree on, ``channel``
the data-only wire format, ``host`` executes a program and answers
operations, ``runner`` isolates itself and serves them.
"""
