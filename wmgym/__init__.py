"""The ``wmgym`` command line: the top layer, over ``train``, ``benchmarks``, ``policies``,
``judges`` and ``wm_env``. Each subcommand imports its layer only when it runs."""
