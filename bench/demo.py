"""The first `./run`: migrate and seed the demo store into a fresh SQLite database.

Runs what `./run` runs after the install (embedded defaults, DEBUG on), in one process
and into a throwaway database under a temporary directory: `migrate`, then
`demo.replay.demo_seed`. Prints the wall time of each phase, where the replay's time went
(by kind of happening, and the scheduler passes) and what the replay produced. With
`--profile FILE` the seed runs under cProfile and the top functions are printed.

    flock /tmp/bench.lock .venv/bin/python bench/demo.py
    flock /tmp/bench.lock .venv/bin/python bench/demo.py --customers 500 --days 30 \
        --profile /tmp/demo.prof
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--end", help="the replay's last moment, ISO 8601 (default: now); fix it to compare runs"
    )
    parser.add_argument("--profile", help="write a cProfile of the seed to this file")
    parser.add_argument("--top", type=int, default=40, help="functions shown with --profile")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="recoup_bench_demo_")
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/db.sqlite3"
    os.environ.setdefault("DEBUG", "1")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    t0 = time.perf_counter()
    import django

    django.setup()
    from django.core.management import call_command

    t1 = time.perf_counter()
    call_command("migrate", interactive=False, verbosity=0)
    t2 = time.perf_counter()
    cpu2 = cpu()

    from demo import replay as demo

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    import datetime as dt

    end = dt.datetime.fromisoformat(args.end).replace(tzinfo=dt.UTC) if args.end else None
    summary, _ = demo.demo_seed(
        customers=args.customers, days=args.days, seed=args.seed, end=end, out=sys.stdout
    )
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    t3 = time.perf_counter()

    print(summary.text)
    print(summary.timing)
    print(
        f"django.setup {t1 - t0:.1f} s, migrate {t2 - t1:.1f} s, "
        f"demo_seed {t3 - t2:.1f} s (CPU {cpu() - cpu2:.1f} s), total {t3 - t0:.1f} s; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if profiler is not None:
        import pstats

        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(args.top)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if summary.counts.get("errors", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
