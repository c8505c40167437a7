"""`manage.py simulate`: one seeded cohort through recoup, a fixed schedule and no retries."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

from demo import simulation
from demo.extra import require


class Command(BaseCommand):
    help = (
        "Simulate failed-payment recovery for one seeded cohort of subscribers with the "
        "sandbox issuer, per strategy (recoup = the real engine and scheduler in simulated "
        "time; fixed = retries on days 3, 7, 14; none = no retries), and print them side "
        "by side. Leaves no rows behind (one rolled-back transaction)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--strategy",
            action="append",
            choices=simulation.STRATEGIES,
            help="recoup, fixed or none; repeat for several (default: all three)",
        )
        parser.add_argument("--customers", type=int, default=500)
        parser.add_argument("--days", type=int, default=60, help="period in which renewals fail")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument(
            "--failure-rate",
            type=float,
            default=0.25,
            help="chance that a monthly renewal fails (at most one failure per customer)",
        )
        parser.add_argument("--out", type=Path, help="directory for results.csv and chart.png")

    def handle(self, *args, **opts):
        self.verbosity = opts["verbosity"]
        strategies = list(dict.fromkeys(opts["strategy"] or simulation.STRATEGIES))
        if opts["customers"] < 1 or opts["days"] < 1:
            raise CommandError("--customers and --days must be at least 1.")
        if not 0 <= opts["failure_rate"] <= 1:
            raise CommandError("--failure-rate is a probability between 0 and 1.")
        if "recoup" in strategies:
            self._check_ready()
        if opts["out"]:
            require("matplotlib", "draws the chart that --out writes")
        cohort = simulation.build_cohort(
            seed=opts["seed"],
            customers=opts["customers"],
            days=opts["days"],
            failure_rate=opts["failure_rate"],
            window_days=simulation.default_window_days(),
        )
        results = []
        for name in strategies:
            if name == "recoup":
                results.append(simulation.run_recoup(cohort, log=self._log))
            else:
                results.append(simulation.run_baseline(cohort, name))
        vendor = connections[DEFAULT_DB_ALIAS].vendor
        self.stdout.write(simulation.format_table(cohort, results, database=vendor))
        if opts["out"]:
            out: Path = opts["out"]
            out.mkdir(parents=True, exist_ok=True)
            simulation.write_csv(out / "results.csv", cohort, results)
            simulation.write_chart(out / "chart.png", cohort, results)
            self.stdout.write(f"wrote {out / 'results.csv'} and {out / 'chart.png'}")

    def _log(self, message: str) -> None:
        if self.verbosity >= 2:
            self.stderr.write(message)

    def _check_ready(self) -> None:
        require(
            "time_machine",
            "steps the recoup strategy through simulated time "
            "(or run --strategy fixed --strategy none)",
        )
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise CommandError(
                "The database has unapplied migrations: run `manage.py migrate` first."
            )
