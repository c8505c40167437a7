"""Settings for benchmarks: the production settings, plus a bare view to compare against.

Everything comes from `config.settings` (and so from the environment); only the URLconf
and, when BENCH_Q_NAME is set, the django-q2 cluster name (so a run's queue is its own
and can be removed afterwards) differ.
"""

import os

from config.settings import *  # noqa: F403
from config.settings import Q_CLUSTER

ROOT_URLCONF = "bench.bare_urls"

if os.environ.get("BENCH_Q_NAME"):
    Q_CLUSTER = {**Q_CLUSTER, "name": os.environ["BENCH_Q_NAME"]}
