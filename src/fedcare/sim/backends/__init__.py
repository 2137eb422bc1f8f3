"""Where a simulated round's chunks of sites run: in this process, or as Ray tasks.

``choice.py`` checks the ``--backend``/``--address`` options, ``recipe.py`` describes a run
so a worker can rebuild it from the study's config (data loaded where the task runs), and
``ray_backend.py`` (the only module that imports ray) runs the chunks on a Ray cluster.
"""
