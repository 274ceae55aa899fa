"""Building blocks of the benchmark tools (``tools/benchmark_speed.py``, ``tools/ablation.py``).

- :mod:`.records`: the machine a result was measured on, peak memory of a block, result files;
- :mod:`.speed_setup`: the models, inputs and per-iteration counts of the speed benchmark;
- :mod:`.speed_report`: its Markdown tables and goals.

Not imported by ``r2ios_d2`` itself: import the modules directly.
"""
