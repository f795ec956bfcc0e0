"""Plan folders: what a compiled model saves (one ``stage_K.py`` and its weights per stage,
``plan.txt``, ``plan.json``), the one reader of plan.json (``manifest.read_plan_folder``) and
the loader of a stage (``folder.load_stage_module``)."""
