"""The ``logystera`` console script (``main.py``) and the bodies of its commands that belong to no process of their own."""
