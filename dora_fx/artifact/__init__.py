"""Plan folders: what a compiled model saves (one ``stage_K.py`` and its weights per stage,
``plan.txt``, ``plan.json``) and the one reader of them (``folder``)."""
